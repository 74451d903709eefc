"""The GAN methods, in one registry, and the configs their stages build from params.

Every place that needs to know what a method is reads :data:`METHODS`: the CLI's ``--method``
choices, the generate/fidelity stages (one conditional generator or one per class? translations
of real source images?), an arm's ``extra: <method>/<set>``, and which methods keep
discriminators that can serve as class experts. A new method is one :func:`register_method` call.

The ``*_config`` builders take the ``gan`` params block as plain values (the CLI passes it from the
typed ``Config``) and return the library's own config dataclasses, typed by
:func:`dermagan.typed.build_dataclass`, so a bad value is refused naming its key.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dermagan.errors import DermaganError
from dermagan.typed import build_dataclass, check_fields


@dataclass(frozen=True)
class GanMethod:
    """What the pipeline needs to know about one way of making extra images."""

    name: str
    train_stage: str          # the dvc stage (and `dermagan` subcommand) that trains it
    conditional: bool         # one generator for every class (its index entry is "conditional")
    translation: bool         # translates real train images of a source class (manifest column `source`)
    experts: bool             # keeps per-class discriminators usable as frozen class experts
    description: str


METHODS: dict[str, GanMethod] = {}
CONDITIONAL_NAME = "conditional"


def register_method(method: GanMethod) -> GanMethod:
    METHODS[method.name] = method
    return method


for _m in (
    GanMethod("dcgan", "train_gan", False, False, False, "one unconditional DCGAN per augmented class"),
    GanMethod("cdcgan", "train_gan", True, False, False, "one class-conditional DCGAN for all augmented classes"),
    GanMethod("stgan", "train_stgan", False, False, True,
              "FastGAN + projected D, stage 1 on all train images, stage 2 per class (Freeze-D + Barlow Twins)"),
    GanMethod("cyclegan", "train_cyclegan", False, True, False,
              "CycleGAN translation of real source-class train images into each augmented class"),
):
    register_method(_m)


def register_variants(variants: dict[str, dict], base: str = "cyclegan") -> list[str]:
    """Register params-declared variants of ``base`` (e.g. ``gan.cyclegan.variants``: a CycleGAN with other
    settings) as methods of their own, so arms, generate, dedup and fidelity take them by name."""
    parent = METHODS[base]
    for name, overrides in variants.items():
        known = METHODS.get(name)
        if known is not None and known.description.partition(":")[0] != f"{base} variant":
            raise DermaganError(f"params: gan.{base}.variants.{name}: '{name}' is already a GAN method; "
                                "choose another name")
        settings = ", ".join(f"{k}={v}" for k, v in (overrides or {}).items())
        register_method(GanMethod(name, parent.train_stage, parent.conditional, parent.translation, parent.experts,
                                  f"{base} variant: {settings or 'the same settings'}"))
    return sorted(variants)


def variant_of(name: str) -> str | None:
    """The method ``name`` is a params variant of (None for a built-in method)."""
    head = get_method(name).description.partition(":")[0]
    return head.removesuffix(" variant") if head.endswith(" variant") else None


def get_method(name: str, where: str = "method") -> GanMethod:
    if name not in METHODS:
        raise DermaganError(f"params: {where} '{name}' is not a GAN method; methods are {sorted(METHODS)}")
    return METHODS[name]


def methods_with(**flags: bool) -> list[str]:
    """Names of the methods whose flags equal ``flags``, e.g. ``methods_with(train_stage="train_gan")``."""
    return sorted(n for n, m in METHODS.items() if all(getattr(m, k) == v for k, v in flags.items()))


def generator_name(method: str, dx: str) -> str:
    """The generator index entry that makes class ``dx`` for ``method``."""
    return CONDITIONAL_NAME if get_method(method).conditional else dx


# --- config builders ----------------------------------------------------------------------------------------------

def check_classes(classes: list[str], known: tuple[str, ...]) -> list[str]:
    unknown = [c for c in classes if c not in known]
    if unknown or not classes:
        raise DermaganError(f"params: gan.classes must be a non-empty subset of {list(known)}, got {classes}")
    return list(classes)


def dcgan_config(gan: dict, image_size: int, num_classes: int | None):
    """GanConfig from the ``gan`` block (its DCGAN keys); the image size is the prepared one."""
    from dermagan.gan.configs import GanConfig

    keys = {f.name for f in fields(GanConfig)}
    values = {k: gan[k] for k in keys if k in gan}
    return build_dataclass(GanConfig, {**values, "image_size": image_size, "num_classes": num_classes}, "gan")


STGAN_NET_KEYS = ("discriminator", "feature_size", "conditional", "latent_dim", "ngf", "ndf", "lr_g", "lr_d", "beta1",
                  "beta2", "batch_size", "diffaugment", "aux_weight", "grid_size", "seed")
STGAN_STAGE_KEYS = ("total_images", "ema_half_life_images", "freeze_d_blocks", "barlow_weight", "barlow_lambda",
                    "snapshot_every_images", "checkpoint_every_images", "diffaugment_p")
# net keys a stage block may override: training settings, not the architecture stage 2 must share
STGAN_OVERRIDABLE = ("lr_g", "lr_d", "diffaugment")
STGAN_TUNED_BLOCK = "stgan_tuned"  # gan.stgan_tuned.<class>: stage-2 values from `dermagan tune gan --apply`


def stgan_config(gan: dict, image_size: int, classes: tuple[str, ...], stage: str, dx: str | None = None):
    """StganConfig from ``gan.stgan.net`` + ``gan.stgan.<stage>`` (+ ``per_class.<dx>`` and the tuned values
    of ``dx`` in stage 2). ``classes`` are the task labels a conditional stage 1 is conditioned on."""
    from dermagan.gan.configs import StganConfig

    block = gan.get("stgan") or {}
    if not block:
        raise DermaganError("params: gan.stgan is missing (net, stage1, stage2, per_class)")
    net, values = dict(block["net"]), dict(block[stage])
    check_fields(StganConfig, net, "gan.stgan.net")
    check_fields(StganConfig, values, f"gan.stgan.{stage}")
    where = f"gan.stgan.{stage}"
    if dx is not None:
        per_class = block.get("per_class") or {}
        if dx not in per_class:
            raise DermaganError(f"params: gan.stgan.per_class has no entry for class '{dx}' (every class in "
                                f"gan.classes needs one, e.g. {dx}: {{total_images: 8000}})")
        check_fields(StganConfig, per_class[dx] or {}, f"gan.stgan.per_class.{dx}")
        values.update(per_class[dx] or {})
        tuned = dict((gan.get(STGAN_TUNED_BLOCK) or {}).get(dx) or {})
        check_fields(StganConfig, tuned, f"gan.{STGAN_TUNED_BLOCK}.{dx}")
        both = sorted(set(tuned) & set(per_class[dx] or {}))
        if both:
            raise DermaganError(f"params: gan.stgan.per_class.{dx}.{both[0]} is also tuned (gan.{STGAN_TUNED_BLOCK}."
                                f"{dx} in the tuned-params file); a tuned key lives only in the tuned file: delete it "
                                f"from params.yaml (all: {both})")
        values.update(tuned)
        where = f"gan.stgan.per_class.{dx}"
    if "total_images" not in values:
        raise DermaganError(f"params: {where} needs total_images (the training length in real images shown to D)")
    unknown = sorted(set(net) - set(STGAN_NET_KEYS)) + sorted(set(values) - set(STGAN_STAGE_KEYS) -
                                                              set(STGAN_OVERRIDABLE))
    if unknown:
        raise DermaganError(f"params: unknown gan.stgan keys {unknown}; net keys: {list(STGAN_NET_KEYS)}, "
                            f"stage keys: {list(STGAN_STAGE_KEYS)} (a stage may also override "
                            f"{list(STGAN_OVERRIDABLE)})")
    conditional = net.pop("conditional", False)
    if not isinstance(conditional, bool):
        raise DermaganError(f"params: gan.stgan.net.conditional = {conditional!r}: must be true or false")
    fixed_label = classes.index(dx) if (conditional and dx is not None) else None
    return build_dataclass(StganConfig, {**net, **values, "image_size": image_size,
                                         "num_classes": len(classes) if conditional else None,
                                         "fixed_label": fixed_label}, "gan.stgan")


def cyclegan_config(gan: dict, image_size: int, classes: tuple[str, ...], dx: str, variant: str | None = None):
    """CycleGanConfig from ``gan.cyclegan.net`` + ``gan.cyclegan.per_class.<dx>`` (+ ``variants.<variant>``)."""
    from dermagan.gan.configs import CycleGanConfig, check_config

    block = gan.get("cyclegan") or {}
    keys = tuple(f.name for f in fields(CycleGanConfig) if f.name != "image_size")
    values = dict(block.get("net") or {})
    check_fields(CycleGanConfig, values, "gan.cyclegan.net")
    per_class = block.get("per_class") or {}
    if dx not in per_class:
        raise DermaganError(f"params: gan.cyclegan.per_class has no entry for class '{dx}' (every class in "
                            f"gan.cyclegan.classes needs one, e.g. {dx}: {{total_images: 2000}})")
    check_fields(CycleGanConfig, per_class[dx] or {}, f"gan.cyclegan.per_class.{dx}")
    values.update(per_class[dx] or {})
    if variant is not None:
        variants = block.get("variants") or {}
        if variant not in variants:
            raise DermaganError(f"params: gan.cyclegan.variants has no '{variant}'; variants are {sorted(variants)}")
        check_fields(CycleGanConfig, variants[variant] or {}, f"gan.cyclegan.variants.{variant}")
        values.update(variants[variant] or {})
    if "total_images" not in values:
        raise DermaganError(f"params: gan.cyclegan.per_class.{dx} (or gan.cyclegan.net) needs total_images "
                            "(the training length in target-class images shown to D_B)")
    unknown = sorted(set(values) - set(keys))
    if unknown:
        raise DermaganError(f"params: unknown gan.cyclegan keys {unknown} (net or per_class.{dx}); known: {list(keys)}")
    cfg = check_config(build_dataclass(CycleGanConfig, {**values, "image_size": image_size}, "gan.cyclegan"))
    if cfg.source_class not in classes or cfg.source_class == dx:
        raise DermaganError(f"params: gan.cyclegan source_class must be one of {list(classes)} other than the "
                            f"target class '{dx}', got '{cfg.source_class}'")
    return cfg
