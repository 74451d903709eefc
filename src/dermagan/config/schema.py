"""The one typed, frozen ``Config`` every stage receives, validated when it is built.

``params.yaml`` (plus the tuned-params files it names) is read once by :mod:`dermagan.config.load`
and turned into a :class:`Config` here. Every value is checked against its declared type and range
(strictly: ``64.9`` is not an int, ``true`` is not a size, ``"forty-two"`` is not a seed), and the
checks that belong to a later stage run now, so a bad value fails at the first stage with an error
that names the key, the value and what is allowed, instead of deep inside a later one.

Blocks whose keys the library owns (the classifier recipe, the GAN configs) are validated by
building the library's own config dataclasses from them (:meth:`Config.recipe`,
:meth:`Config.stgan`, ...), so a key means the same thing at load time and at run time.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError,
                      model_validator)

from dermagan.errors import DermaganError

DEVICES = ("auto", "cpu", "cuda")


class ConfigError(DermaganError):
    """A params value that is missing, of the wrong type or out of range (names the key)."""


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _device(value: str) -> str:
    base, _, index = value.partition(":")
    if base not in DEVICES or (index and (base != "cuda" or not index.isdigit())):
        raise ValueError(f"must be one of {list(DEVICES)} or cuda:N")
    return value


def _unique(value: tuple) -> tuple:
    if len(set(value)) != len(value):
        raise ValueError("must not repeat a value")
    return value


def _non_empty(value: tuple) -> tuple:
    if not value:
        raise ValueError("must not be empty")
    return value


Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]  # strictly between 0 and 1
Share = Annotated[float, Field(ge=0.0, le=1.0)]
PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PosFloat = Annotated[float, Field(gt=0.0)]
NonNegFloat = Annotated[float, Field(ge=0.0)]
Seed = Annotated[int, Field(ge=0)]
Device = Annotated[str, AfterValidator(_device)]
Names = Annotated[tuple[str, ...], BeforeValidator(_as_tuple), AfterValidator(_unique)]
Seeds = Annotated[tuple[Seed, ...], BeforeValidator(_as_tuple), AfterValidator(_unique), AfterValidator(_non_empty)]
FloatPair = Annotated[tuple[float, float], BeforeValidator(_as_tuple)]


class Section(BaseModel):
    """A params block: frozen, strict types, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    def plain(self) -> dict[str, Any]:
        """The block as plain values (tuples become lists), for library calls and MLflow params."""
        return _plain(self.model_dump())


class OpenSection(Section):
    """A block whose extra keys are validated elsewhere (e.g. by a library config dataclass)."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# -- data ---------------------------------------------------------------------------------------------------------

HAM10000_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # the default task (params override it)


class DatasetInfo(Section):
    """Where the images come from and on what terms: model cards and bundles repeat it, and the
    weights inherit its licence terms (HAM10000: CC BY-NC 4.0, so non-commercial use only)."""

    name: str = "HAM10000"
    licence: str = "CC BY-NC 4.0 (https://creativecommons.org/licenses/by-nc/4.0/)"
    citation: str = ("Tschandl, P., Rosendahl, C. & Kittler, H. The HAM10000 dataset, a large collection of "
                     "multi-source dermatoscopic images of common pigmented skin lesions. Sci. Data 5, 180161 "
                     "(2018). https://doi.org/10.1038/sdata.2018.161")
    non_commercial: bool = True   # the licence forbids commercial use; cards say the weights inherit that


class DataSection(Section):
    """The task: its ordered label set, how raw ``dx`` values map onto it, and optional source metadata."""

    classes: Names = HAM10000_CLASSES
    label_map: dict[str, str | None] = Field(default_factory=dict)  # raw dx -> task label (null: drop the rows)
    positive: str | None = None      # binary tasks: the positive class (ROC AUC, sensitivity at specificity)
    sources: str | None = None       # CSV of image_id -> acquisition source (column `dataset`); needed by split.by: source
    dataset: DatasetInfo = Field(default_factory=DatasetInfo)  # provenance and licence, for model cards

    @model_validator(mode="after")
    def _check(self) -> "DataSection":
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"data.classes = {list(self.classes)}: needs at least 2 distinct labels")
        bad = sorted({v for v in self.label_map.values() if v is not None} - set(self.classes))
        if bad:
            raise ValueError(f"data.label_map maps onto {bad}, which are not in data.classes {list(self.classes)}")
        if self.positive is not None:
            if self.positive not in self.classes:
                raise ValueError(f"data.positive = {self.positive!r}: not one of data.classes {list(self.classes)}")
            if len(self.classes) != 2:
                raise ValueError(f"data.positive = {self.positive!r}: a positive class needs a binary task "
                                 f"(data.classes has {len(self.classes)} labels)")
        return self


class SplitSection(Section):
    by: Literal["lesion", "source"] = "lesion"   # source: test = every image of test_sources (domain shift)
    test_sources: Names = ()

    @model_validator(mode="after")
    def _check(self) -> "SplitSection":
        if self.by == "source" and not self.test_sources:
            raise ValueError("prepare.split.by = source needs prepare.split.test_sources (e.g. [rosendahl])")
        if self.by == "lesion" and self.test_sources:
            raise ValueError(f"prepare.split.test_sources = {list(self.test_sources)} is only read with "
                             "prepare.split.by: source")
        return self


class PrepareSection(Section):
    image_size: PosInt
    val_fraction: Fraction
    test_fraction: Fraction
    seed: Seed
    min_image_side: PosInt = 32
    max_lesions_per_class: PosInt | None = None  # a seeded subset (quick looks); null = every lesion
    split: SplitSection = Field(default_factory=lambda: SplitSection())

    @model_validator(mode="after")
    def _check(self) -> "PrepareSection":
        if self.image_size % 8:
            raise ValueError(f"prepare.image_size = {self.image_size}: must be a multiple of 8 (the classifier "
                             "and GAN networks halve it three times), e.g. 64")
        if self.image_size < self.min_image_side:
            raise ValueError(f"prepare.image_size = {self.image_size}: must be at least prepare.min_image_side "
                             f"({self.min_image_side}); images are never upscaled past their own size")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(f"prepare.val_fraction + prepare.test_fraction = "
                             f"{self.val_fraction + self.test_fraction}: must be below 1 (train needs lesions)")
        return self


class ValidateSection(Section):
    min_pixel_std: NonNegFloat
    min_class_count: NonNegInt
    min_class_share: Share
    max_class_share: Annotated[float, Field(gt=0.0, le=1.0)]

    @model_validator(mode="after")
    def _check(self) -> "ValidateSection":
        if self.min_class_share > self.max_class_share:
            raise ValueError(f"validate.min_class_share = {self.min_class_share}: must not exceed "
                             f"validate.max_class_share ({self.max_class_share})")
        return self


# -- classifier ---------------------------------------------------------------------------------------------------

class TrainSection(OpenSection):
    """``train``: run settings plus the shared recipe keys (checked by :meth:`Config.recipe`)."""

    seeds: Seeds
    device: Device = "auto"
    max_batches_per_epoch: PosInt | None = None


BACKBONE_NAMES = ("simple_cnn", "mobilenetv2_100", *(f"{p}efficientnet_lite{n}" for n in (0, 1, 2) for p in ("", "tf_")))


class Recipe(Section):
    """A classifier recipe (``train`` + tuned values + an arm's overrides): the keys of
    :data:`dermagan.classify.recipe.RECIPE_KEYS`, typed. A test keeps the two lists equal."""

    backbone: Literal[BACKBONE_NAMES]  # type: ignore[valid-type]  # classify.models.BACKBONES
    pretrained: Literal["package", "hub"] | None
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    weight_decay: NonNegFloat
    lr_schedule: Literal["cosine", "onecycle", "step", "none"]
    warmup_epochs: NonNegFloat
    step_size: PosInt
    gamma: PosFloat
    patience: PosInt
    label_smoothing: Annotated[float, Field(ge=0.0, lt=1.0)]
    class_weight_power: NonNegFloat
    sampler: Literal["shuffle", "class_balanced"]
    augment: bool
    augment_strength: Share
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)]
    drop_path: Annotated[float, Field(ge=0.0, lt=1.0)]
    tta: Literal["none", "hflip", "flips", "d4"]
    temperature_scaling: bool


class AugmentSection(Section):
    hflip: bool
    vflip: bool
    rot90: bool
    rotation_degrees: Annotated[float, Field(ge=0.0, le=180.0)]
    crop_scale: FloatPair
    brightness: NonNegFloat
    contrast: NonNegFloat
    saturation: NonNegFloat

    @model_validator(mode="after")
    def _check(self) -> "AugmentSection":
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"augment.crop_scale = {list(self.crop_scale)}: must be [low, high] with "
                             "0 < low <= high <= 1")
        return self


class ExpertsSection(Section):
    method: str
    classes: Names | None = None


class ArmSection(OpenSection):
    """One arm: where its extra images come from, optional class experts, recipe overrides."""

    extra: str | None = None
    experts: ExpertsSection | None = None


class StackingSection(Section):
    iters: PosInt = 1000
    tol: PosFloat = 1e-10


class EnsembleSection(Section):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    arms: Names | None = None
    register_: Literal["auto", "bma", "bma_tempered", "stacked", "average"] = Field("auto", alias="register")
    collapse_threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.99
    stacking: StackingSection = Field(default_factory=lambda: StackingSection())


class CvSection(Section):
    folds: Annotated[int, Field(ge=2)]
    seed: Seed


class EvaluateSection(Section):
    bootstrap_samples: PosInt
    ci_level: Fraction
    seed: Seed
    batch_size: PosInt
    calibration_bins: PosInt = 15
    min_test_count: NonNegInt = 10     # a class with fewer test images is reported but left out of BMA
    verdict_classes: Names | None = None  # recalls compare judges (null: the positive class, or every class)
    specificity: Fraction = 0.9        # binary tasks: sensitivity at this specificity (threshold set on val)
    power: Fraction = 0.8              # minimum detectable difference of each verdict at this power ...
    external: dict[str, str] = Field(default_factory=dict)  # name -> folder (HAM10000 layout), scored beside test


class MlflowSection(Section):
    experiment: Annotated[str, Field(min_length=1)]
    registered_model: Annotated[str, Field(min_length=1)]


# -- GANs ---------------------------------------------------------------------------------------------------------

class AmountSection(Section):
    mode: Literal["count", "share"]
    value: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _check(self) -> "AmountSection":
        if self.mode == "count" and float(self.value) != int(self.value):
            raise ValueError(f"gan.amount.value = {self.value}: a count must be a whole number")
        return self


class StganSection(Section):
    net: dict[str, Any]
    stage1: dict[str, Any]
    stage2: dict[str, Any]
    per_class: dict[str, dict[str, Any] | None] = Field(default_factory=dict)


class CycleganSection(Section):
    classes: Names = ()
    net: dict[str, Any] = Field(default_factory=dict)
    per_class: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any] | None] = Field(default_factory=dict)  # name -> overrides: a method each


class GanSection(OpenSection):
    """``gan``: method lists and shared keys; DCGAN keys are checked by building its GanConfig."""

    methods: Names = ()
    dcgan_methods: Names = ()
    classes: Annotated[Names, AfterValidator(_non_empty)]
    amount: AmountSection
    candidates_factor: Annotated[float, Field(ge=1.0)] = 1.0
    seed: Seed = 0
    generate_seed: Seed = 0
    experiment: Annotated[str, Field(min_length=1)] = "dermagan-gan"
    registered_model: Annotated[str, Field(min_length=1)] = "dermagan-generator"  # every generator's versions
    stgan: StganSection | None = None
    cyclegan: CycleganSection | None = None
    stgan_tuned: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    amount_tuned: dict[str, dict[str, NonNegInt]] = Field(default_factory=dict)


class DedupSection(Section):
    hash_size: PosInt
    whash_image_scale: PosInt
    rule: Literal["all", "any"]
    thresholds: dict[Literal["phash", "whash"], NonNegInt]


class DomainEncoderSection(Section):
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    seed: Seed


class CasSection(Section):
    epochs: PosInt
    batch_size: PosInt
    lr: PosFloat
    seeds: Seeds


class TwoSampleSection(Section):
    folds: Annotated[int, Field(ge=2)]
    bootstrap_samples: PosInt


class FidelitySection(Section):
    feature_size: PosInt
    knn_k: PosInt
    seed: Seed
    grid_images: PosInt
    nearest_examples: NonNegInt
    domain_encoder: DomainEncoderSection
    cas: CasSection
    two_sample: TwoSampleSection


# -- tuning -------------------------------------------------------------------------------------------------------

class PrunerSection(Section):
    kind: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: NonNegInt | None = None
    n_warmup_steps: NonNegInt | None = None
    max_resource: PosInt | Literal["auto"] | None = None
    reduction_factor: Annotated[int, Field(ge=2)] | None = None


class StudySection(OpenSection):
    """One tuning target: the study settings shared by every target; target keys are extra."""

    study: Annotated[str, Field(min_length=1)]
    n_trials: PosInt
    timeout_minutes: PosFloat | None = None  # None: no time limit
    seed: Seed
    n_startup_trials: NonNegInt
    pruner: PrunerSection
    enqueue: Annotated[tuple[dict[str, Any], ...], BeforeValidator(_as_tuple)] = ()
    space: dict[str, dict[str, Any]]


class TuneSection(Section):
    experiment: Annotated[str, Field(min_length=1)]
    dir: Annotated[str, Field(min_length=1)]
    storage: str | None = None
    classifier: StudySection
    gan: StudySection


class TunedInfo(Section):
    """Where tuned values came from (filled by the loader, not by params.yaml)."""

    file: str | None = None
    files: dict[str, str] = Field(default_factory=dict)
    keys: Annotated[tuple[str, ...], BeforeValidator(_as_tuple)] = ()
    study: dict[str, Any] = Field(default_factory=dict)


# -- the whole config ---------------------------------------------------------------------------------------------

class Config(Section):
    """Every knob of the project, typed and checked. Stages read it; library code takes its values."""

    data: DataSection = Field(default_factory=lambda: DataSection())
    prepare: PrepareSection
    validation: ValidateSection = Field(alias="validate")
    train: TrainSection
    augment: AugmentSection
    arms: dict[str, ArmSection | None]
    ensemble: EnsembleSection | None = None
    cv: CvSection | None = None
    evaluate: EvaluateSection
    mlflow: MlflowSection
    gan: GanSection
    dedup: DedupSection | None = None
    fidelity: FidelitySection | None = None
    tune: TuneSection | None = None
    tuned_params: str | None = None
    tuned_gan_params: str | None = None
    tuned: TunedInfo = Field(default_factory=TunedInfo)
    source: str = Field(default="params.yaml", exclude=True)  # the file it was read from (for messages)

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        classes = self.data.classes
        unknown = [c for c in self.gan.classes if c not in classes]
        if unknown:
            raise ValueError(f"gan.classes = {list(self.gan.classes)}: {unknown} are not task labels "
                             f"(data.classes {list(classes)})")
        unknown = [c for c in self.evaluate.verdict_classes or () if c not in classes]
        if unknown:
            raise ValueError(f"evaluate.verdict_classes = {list(self.evaluate.verdict_classes)}: {unknown} are not "
                             f"task labels (data.classes {list(classes)})")
        source = (self.gan.cyclegan.net or {}).get("source_class") if self.gan.cyclegan else None
        if self.gan.cyclegan and self.gan.cyclegan.classes and source is not None and source not in classes:
            raise ValueError(f"gan.cyclegan.net.source_class = {source!r}: not a task label "
                             f"(data.classes {list(classes)})")
        if self.prepare.split.by == "source" and not self.data.sources:
            raise ValueError("prepare.split.by = source needs data.sources (the CSV of each image's acquisition "
                             "source, e.g. ../shared/data/ham10000_sources.csv)")
        if not self.arms:
            raise ValueError("arms: at least one arm is needed")
        return self

    # Blocks the library owns are validated by building the library's own configs (see check_config).

    def arm(self, name: str) -> ArmSection:
        if name not in self.arms:
            raise ConfigError(f"params: unknown arm '{name}'; arms are {sorted(self.arms)}")
        return self.arms[name] or ArmSection()

    def arm_overrides(self, name: str) -> dict[str, Any]:
        """The arm's recipe overrides and ``extra`` (everything but ``experts``)."""
        arm = self.arm(name)
        return {"extra": arm.extra, **(arm.model_extra or {})}

    def recipe(self, arm: str) -> dict[str, Any]:
        """The shared recipe (``train`` + tuned values) with the arm's overrides, checked and typed."""
        from dermagan.classify.keys import build_recipe

        overrides = self.arm_overrides(arm)
        recipe = build_recipe(self.train.plain(), overrides, where=f"arms.{arm}")
        try:
            return Recipe.model_validate(recipe).plain()
        except ValidationError as exc:  # name the block the bad value came from
            for err in exc.errors(include_url=False):
                key = str(err["loc"][0]) if err["loc"] else ""
                where = f"arms.{arm}" if key in overrides else "train"
                raise ConfigError(f"{self.source}: {where}.{key} = {err['input']!r}: "
                                  f"{err['msg'].removeprefix('Value error, ')}") from None
            raise

    @property
    def classes(self) -> tuple[str, ...]:
        """The task's ordered label set (integer labels index it): params ``data.classes``."""
        return tuple(self.data.classes)

    @property
    def verdict_classes(self) -> tuple[str, ...]:
        """The classes whose recall compare judges: ``evaluate.verdict_classes``, or the positive class of a
        binary task, or every class."""
        if self.evaluate.verdict_classes is not None:
            return tuple(self.evaluate.verdict_classes)
        if self.data.positive is not None:
            return (self.data.positive,)
        return tuple(self.data.classes)

    def stgan_config(self, stage: str, dx: str | None = None):
        """The library's StganConfig of STGAN ``stage`` ("stage1" | "stage2"), for class ``dx`` in stage 2."""
        from dermagan.gan.methods import stgan_config

        if dx is not None and dx not in self.gan.classes:
            raise ConfigError(f"class '{dx}' is not in params gan.classes {list(self.gan.classes)}")
        return stgan_config(self.gan.plain(), self.prepare.image_size, self.classes, stage, dx)

    def cyclegan_config(self, dx: str, variant: str | None = None):
        from dermagan.gan.methods import cyclegan_config

        if dx not in self.gan.classes:
            raise ConfigError(f"class '{dx}' is not in params gan.classes {list(self.gan.classes)}")
        return cyclegan_config(self.gan.plain(), self.prepare.image_size, self.classes, dx, variant)

    def dcgan_config(self, num_classes: int | None):
        from dermagan.gan.methods import dcgan_config

        return dcgan_config(self.gan.plain(), self.prepare.image_size, num_classes)

    def flat(self) -> dict[str, Any]:
        """Every value as plain data with params.yaml's key names (for logging)."""
        data = _plain(self.model_dump(by_alias=True, exclude={"tuned"}))
        return data


def error_text(exc: ValidationError, source: str) -> str:
    """One line per problem: ``file: key = value: what is allowed``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-")
                       and p not in ("tagged-union",))
        loc = loc.replace("validation", "validate", 1) if loc.startswith("validation") else loc
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            lines.append(f"{source}: {loc} is missing (it has no default; see params.yaml)")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{source}: {loc} is not a known key (check its spelling)")
        elif loc and not msg.startswith(loc.split(".")[0] + "."):
            lines.append(f"{source}: {loc} = {err['input']!r}: {msg}")
        else:
            lines.append(f"{source}: {msg}")
    return "\n".join(lines)


def build_config(params: dict[str, Any], source: str = "params.yaml") -> Config:
    """Validate a merged params mapping into a :class:`Config` (all problems in one error)."""
    try:
        config = Config.model_validate({**params, "source": source})
    except ValidationError as exc:
        raise ConfigError(error_text(exc, source)) from None
    try:
        check_library_blocks(config)
    except ConfigError:
        raise
    except DermaganError as exc:  # a library config refused a value: same form, naming the file
        raise ConfigError(f"{source}: {str(exc).removeprefix('params: ')}") from None
    return config


def check_recipe(config: Config, arm: str, searched: set[str]) -> None:
    """The arm's recipe, checked; keys a classifier study searches may still be missing (a first
    `dermagan tune classifier` supplies them; the train stage refuses the arm until then)."""
    from dermagan.classify.keys import RECIPE_KEYS

    have = {**config.train.plain(), **config.arm_overrides(arm)}
    missing = [k for k in RECIPE_KEYS if k not in have]
    if missing and set(missing) <= searched:
        partial = {k: v for k, v in have.items() if k in RECIPE_KEYS}
        try:
            Recipe.model_validate({**_recipe_stand_in(), **partial})
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            key = str(err["loc"][0])
            where = f"arms.{arm}" if key in config.arm_overrides(arm) else "train"
            raise ConfigError(f"{config.source}: {where}.{key} = {err['input']!r}: "
                              f"{err['msg'].removeprefix('Value error, ')}") from None
        return
    config.recipe(arm)


def _recipe_stand_in() -> dict[str, Any]:
    """A complete valid recipe, only to type-check a partial one's present keys."""
    return {"backbone": "simple_cnn", "pretrained": None, "epochs": 1, "batch_size": 1, "lr": 1e-3,
            "weight_decay": 0.0, "lr_schedule": "none", "warmup_epochs": 0.0, "step_size": 1, "gamma": 0.5,
            "patience": 1, "label_smoothing": 0.0, "class_weight_power": 0.0, "sampler": "shuffle",
            "augment": False, "augment_strength": 0.0, "dropout": 0.0, "drop_path": 0.0, "tta": "none",
            "temperature_scaling": False}


def check_library_blocks(config: Config) -> None:
    """Build each library config the stages will build, so its errors surface at load time."""
    from dermagan.data.extra import parse_extra
    from dermagan.gan.methods import get_method, methods_with, register_variants

    gan = config.gan
    if gan.cyclegan is not None and gan.cyclegan.variants:
        register_variants(dict(gan.cyclegan.variants), "cyclegan")
    for method in (*gan.methods, *gan.dcgan_methods):
        get_method(method, "gan.methods")
    searched = set(config.tune.classifier.space) if config.tune else set()
    for arm in config.arms:
        check_recipe(config, arm, searched)
        parse_extra(config.arm(arm).extra, f"arms.{arm}.extra")
        experts = config.arm(arm).experts
        if experts is not None and not get_method(experts.method, f"arms.{arm}.experts.method").experts:
            raise ConfigError(f"{config.source}: arms.{arm}.experts.method = {experts.method!r}: keeps no "
                              "discriminators to use as class experts; use one of "
                              f"{methods_with(experts=True)}")
    if config.ensemble is not None and config.ensemble.arms:
        unknown = [a for a in config.ensemble.arms if a not in config.arms]
        if unknown:
            raise ConfigError(f"{config.source}: ensemble.arms = {list(config.ensemble.arms)}: {unknown} are not "
                              f"arms; arms are {list(config.arms)}")
    for method in gan.dcgan_methods:
        config.dcgan_config(len(gan.classes) if get_method(method).conditional else None)
    if gan.stgan is not None:
        config.stgan_config("stage1")
        gan_searched = set(config.tune.gan.space) if config.tune else set()
        for dx in gan.classes:
            per_class = (gan.stgan.per_class.get(dx) or {}) | (gan.stgan_tuned.get(dx) or {})
            if "total_images" not in per_class and "total_images" not in gan.stgan.stage2 \
                    and "total_images" in gan_searched and dx in gan.stgan.per_class:
                continue  # a first `dermagan tune gan` supplies it; train_stgan@<class> refuses it until then
            config.stgan_config("stage2", dx)
    if gan.cyclegan is not None:
        outside = [c for c in gan.cyclegan.classes if c not in gan.classes]
        if outside:
            raise ConfigError(f"{config.source}: gan.cyclegan.classes = {list(gan.cyclegan.classes)}: {outside} "
                              f"are not in gan.classes {list(gan.classes)}")
        for dx in gan.cyclegan.classes:
            config.cyclegan_config(dx)
            for variant in gan.cyclegan.variants:
                config.cyclegan_config(dx, variant)
