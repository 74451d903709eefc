"""A bank of frozen class-expert discriminators and its file, ``experts.pt``.

Each expert is the stage-2 projected discriminator of one augmented class (STGAN stage 2 keeps it
in ``artifacts/gan/stgan/<class>/<class>.pt`` under ``D`` / ``D_config``). An expert maps an
image in [-1, 1] (the GAN convention) to a feature vector: for each of its per-scale
discriminators, the global-average-pooled output of the last trunk block, then the per-scale
real/fake logits averaged over positions. The bank's width is the sum over experts of
(sum of trunk widths + number of scales).

Frozen means:

- every tensor has ``requires_grad=False`` and the forward runs under ``torch.no_grad``;
- the bank stays in eval mode whatever :meth:`ClassExperts.train` is asked (BatchNorm running
  statistics and spectral-norm vectors never move);
- spectral norm is *baked*: each parametrized weight is replaced by the weight the eval-mode
  parametrization gives (``W / sigma(u, v)`` with the stored u, v). The forward is the same, no
  power iteration can ever run, and the model pickles (torch refuses to pickle parametrized
  modules, and MLflow logs classifiers as pickles).

Experts whose frozen parts (ImageNet feature network, random CCM/CSM projection, feature size) are
bit-identical - all stage-2 Ds start from the one stage-1 D - share one copy of them, so the
frozen network runs once per batch for the whole group.

Only the GAN methods whose registry entry sets ``experts`` (:data:`dermagan.gan.methods.METHODS`)
keep such discriminators; DCGAN, for one, does not: the ``train_gan`` stage keeps only the EMA
generator of each GAN (``artifacts/gan/<method>/<name>.pt`` has no discriminator).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from dermagan.errors import DermaganError
from dermagan.gan.methods import METHODS, methods_with
from dermagan.gan.projected import FrozenEfficientNetLite0, ProjectedDiscriminator

EXPERTS_FILE = "experts.pt"
FORMAT = "dermagan-class-experts/1"
SETTING_KEYS = ("method", "classes")
# What rebuilds one projected D (the factory's arguments plus the fixed class label of a conditional D).
CONFIG_KEYS = ("discriminator", "image_size", "ndf", "num_classes", "feature_size", "seed", "proj_channels",
               "cmap_dim", "label")
FROZEN_PREFIXES = ("features.", "projection.")


@dataclass(frozen=True)
class ExpertSettings:
    """An arm's ``experts`` block: where the discriminators come from and which classes (None = gan.classes)."""

    method: str
    classes: tuple[str, ...] | None = None

    def spec(self, classes: list[str]) -> dict:
        return {"method": self.method, "classes": list(classes)}


def parse_experts(value, classes: tuple[str, ...], where: str = "arm") -> ExpertSettings | None:
    """``None`` (no experts) or ``{method: stgan[, classes: [...]]}`` -> ExpertSettings; clear errors otherwise.

    ``classes``: the task labels (params ``data.classes``) an expert's class must be one of."""
    task = tuple(classes)
    if value is None or value is False:
        return None
    if not isinstance(value, dict):
        raise DermaganError(f"params: {where}.experts must be a mapping like {{method: stgan}}, got {value!r}")
    unknown = sorted(set(value) - set(SETTING_KEYS))
    if unknown:
        raise DermaganError(f"params: {where}.experts has unknown key(s) {unknown}; keys are {list(SETTING_KEYS)}")
    method = value.get("method")
    experts = methods_with(experts=True)  # the GAN methods that keep per-class discriminators
    known = METHODS.get(method) if isinstance(method, str) else None
    if known is not None and not known.experts:
        raise DermaganError(f"params: {where}.experts.method '{method}' is not supported: the {known.train_stage} "
                            f"stage keeps only the generator (artifacts/gan/{method}/*.pt hold no discriminator); "
                            f"use one of {experts}")
    if method not in experts:
        raise DermaganError(f"params: {where}.experts.method must be one of {experts}, got {method!r}")
    chosen = value.get("classes")
    if chosen is not None:
        chosen = tuple(chosen) if isinstance(chosen, (list, tuple)) else None
        if (not chosen or len(set(chosen)) != len(chosen)
                or any(not isinstance(c, str) or c not in task for c in chosen)):
            raise DermaganError(f"params: {where}.experts.classes must be a non-empty list of distinct task labels "
                                f"(data.classes {list(task)}), got {value.get('classes')!r}")
    return ExpertSettings(str(method), chosen)


def bake_spectral_norm(module: nn.Module) -> None:
    """Replace every parametrized tensor by its eval-mode value (spectral norm with the stored u, v)."""
    module.eval()
    for sub in list(module.modules()):
        if parametrize.is_parametrized(sub):
            for name in list(sub.parametrizations):
                parametrize.remove_parametrizations(sub, name, leave_parametrized=True)


def _frozen_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.startswith(FROZEN_PREFIXES)}


def _same_tensors(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)


def shared_groups(configs: dict[str, dict], states: dict[str, dict[str, torch.Tensor]]) -> list[list[str]]:
    """Experts in groups whose frozen network, projection and feature size are bit-identical (order kept)."""
    groups: list[list[str]] = []
    for name in configs:
        for group in groups:
            first = group[0]
            if (configs[first]["feature_size"] == configs[name]["feature_size"]
                    and configs[first]["image_size"] == configs[name]["image_size"]
                    and _same_tensors(_frozen_part(states[first]), _frozen_part(states[name]))):
                group.append(name)
                break
        else:
            groups.append([name])
    return groups


def _check_config(name: str, config: dict, where: str) -> dict:
    missing = [k for k in CONFIG_KEYS if k not in config]
    if missing:
        raise DermaganError(f"{where}: expert '{name}' config lacks {missing} (needs {list(CONFIG_KEYS)})")
    if config["discriminator"] != "projected":
        raise DermaganError(f"{where}: expert '{name}' has a '{config['discriminator']}' discriminator; class experts "
                            "need the projected one (params gan.stgan.net.discriminator: projected)")
    if config["num_classes"] and config["label"] is None:
        raise DermaganError(f"{where}: expert '{name}' is conditional but has no fixed class label")
    return {k: config[k] for k in CONFIG_KEYS}


class ClassExperts(nn.Module):
    """Frozen projected discriminators, one per class; ``forward(x in [-1, 1]) -> (N, width)`` features.

    Built with :meth:`from_discriminators` (raw stage-2 D state dicts) or :meth:`from_saved`
    (what :meth:`payload` wrote, spectral norm already baked).
    """

    def __init__(self, configs: dict[str, dict], groups: list[list[str]], method: str = "stgan",
                 sources: dict[str, dict] | None = None, where: str = "class experts", baked: bool = True):
        super().__init__()
        if not configs:
            raise DermaganError(f"{where}: no experts")
        self.configs = {name: _check_config(name, dict(cfg), where) for name, cfg in configs.items()}
        flat = [name for group in groups for name in group]
        if sorted(flat) != sorted(self.configs) or len(flat) != len(set(flat)):
            raise DermaganError(f"{where}: groups {groups} must list every expert {list(self.configs)} exactly once")
        self.names = tuple(self.configs)
        self.groups = [list(group) for group in groups]
        self.method = method
        self.sources = dict(sources or {})
        self.discriminators = nn.ModuleDict()
        built = {}
        for group in self.groups:
            shared = FrozenEfficientNetLite0()
            first = None
            for name in group:
                cfg = self.configs[name]
                d = ProjectedDiscriminator(image_size=cfg["image_size"], ndf=cfg["ndf"], num_classes=cfg["num_classes"],
                                           feature_size=cfg["feature_size"], proj_channels=cfg["proj_channels"],
                                           cmap_dim=cfg["cmap_dim"], seed=cfg["seed"], feature_net=shared)
                if first is None:
                    first = d
                else:
                    d.projection = first.projection  # one copy of the frozen projection per group
                built[name] = d
        for name in self.names:  # module order = expert order (state_dict keys, features)
            self.discriminators[name] = built[name]
        sizes = {cfg["image_size"] for cfg in self.configs.values()}
        if len(sizes) != 1:
            raise DermaganError(f"{where}: experts were trained at different image sizes {sorted(sizes)}")
        self.image_size = sizes.pop()
        self.widths = {name: sum(disc.out_channels for disc in d.discs) + len(d.discs)
                       for name, d in self.discriminators.items()}
        self.width = sum(self.widths.values())
        if baked:
            self._freeze()

    def _freeze(self) -> None:
        bake_spectral_norm(self)
        for param in self.parameters():
            param.requires_grad_(False)
        super().train(False)

    @classmethod
    def from_discriminators(cls, configs: dict[str, dict], states: dict[str, dict[str, torch.Tensor]],
                            method: str = "stgan", sources: dict[str, dict] | None = None,
                            where: str = "class experts") -> ClassExperts:
        """The bank from stage-2 D state dicts (spectral norm not yet baked); shares identical frozen parts."""
        bank = cls(configs, shared_groups(configs, states), method, sources, where, baked=False)
        for name, d in bank.discriminators.items():
            try:
                d.load_state_dict(states[name])
            except RuntimeError as exc:
                raise DermaganError(f"{where}: the discriminator of '{name}' does not match its config: {exc}") from exc
        bank._freeze()
        return bank

    @classmethod
    def from_saved(cls, payload: dict, where: str = EXPERTS_FILE) -> ClassExperts:
        """The bank from :meth:`payload` (an ``experts.pt``)."""
        missing = [k for k in ("format", "method", "configs", "groups", "state_dict") if k not in payload]
        if missing or payload.get("format") != FORMAT:
            raise DermaganError(f"{where}: not a class-experts file (missing {missing} or format "
                                f"{payload.get('format')!r} != {FORMAT!r}); re-run validate_augmented")
        bank = cls(payload["configs"], payload["groups"], payload["method"], payload.get("sources"), where)
        bank.load_checked(payload["state_dict"], where=where)
        return bank

    def load_checked(self, state: dict[str, torch.Tensor], prefix: str = "", where: str = EXPERTS_FILE) -> None:
        """Load a baked state dict; shared frozen parts must hold the same tensors under every expert."""
        for group in self.groups:
            ref = _frozen_part({k[len(f"{prefix}discriminators.{group[0]}."):]: v for k, v in state.items()
                                if k.startswith(f"{prefix}discriminators.{group[0]}.")})
            for name in group[1:]:
                start = f"{prefix}discriminators.{name}."
                mine = _frozen_part({k[len(start):]: v for k, v in state.items() if k.startswith(start)})
                if not _same_tensors(ref, mine):
                    raise DermaganError(f"{where}: experts '{group[0]}' and '{name}' are stored as sharing their "
                                        "frozen network and projection, but the stored tensors differ")
        own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            self.load_state_dict(own)
        except RuntimeError as exc:
            raise DermaganError(f"{where}: class-expert weights do not match their configs: {exc}") from exc

    def payload(self) -> dict:
        """What ``experts.pt`` holds (plain values and tensors: loads with ``weights_only=True``)."""
        return {"format": FORMAT, "method": self.method, "classes": list(self.names), "configs": self.configs,
                "groups": self.groups, "sources": self.sources, "widths": self.widths,
                "state_dict": self.state_dict()}

    def describe(self) -> dict:
        """Everything but the weights (for spec.json / model.pt)."""
        return {k: v for k, v in self.payload().items() if k != "state_dict"}

    def train(self, mode: bool = True) -> ClassExperts:
        """Stay in eval mode: frozen experts never update BatchNorm statistics (nor run dropout)."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, width) features of images ``x`` in [-1, 1]: the experts in order, never a gradient."""
        with torch.no_grad():
            out = {}
            for group in self.groups:
                first = self.discriminators[group[0]]
                first._check_input(x)
                maps = first._project(x)  # the shared frozen network + projection, once per group
                for name in group:
                    out[name] = self._expert(name, maps)
            return torch.cat([out[name] for name in self.names], dim=1)

    def _expert(self, name: str, maps: list[torch.Tensor]) -> torch.Tensor:
        d, label = self.discriminators[name], self.configs[name]["label"]
        y = None
        if d.num_classes:  # a conditional D (stage 2 of a conditional stage 1) reads its own class
            y = torch.full((maps[0].shape[0],), int(label), dtype=torch.long, device=maps[0].device)
        pooled, logits = [], []
        for disc, f in zip(d.discs, maps, strict=True):
            h = disc.trunk(f)
            pooled.append(h.mean((2, 3)))
            out = disc.out(h)  # as ScaleDiscriminator.forward, from the trunk already computed
            if disc.num_classes:
                cmap = disc.embed_proj(disc.embed(y))[:, :, None, None]
                out = (out * cmap).sum(1, keepdim=True) / math.sqrt(disc.cmap_dim)
            logits.append(out.flatten(1).mean(1, keepdim=True))
        return torch.cat(pooled + logits, dim=1)


def read_stgan_discriminator(path: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(D config, D state dict) of a stage-2 ``<class>.pt``; clear errors for a missing file or an old one."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"{path}: STGAN stage-2 file of class '{name}' not found; run "
                            f"`dvc repro train_stgan@{name}`")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if "D" not in saved or "D_config" not in saved:
        raise DermaganError(f"{path}: holds no stage-2 discriminator (keys 'D' and 'D_config'); it was written "
                            f"before stage 2 kept its D: re-run `dvc repro train_stgan@{name}`")
    return _check_config(name, saved["D_config"], str(path)), saved["D"]


def collect_experts(settings: ExpertSettings, default_classes: list[str], gan_root: Path) -> ClassExperts:
    """The frozen bank of ``settings`` from the GAN outputs under ``gan_root`` (e.g. ``artifacts/gan``)."""
    classes = list(settings.classes or default_classes)
    folder = Path(gan_root) / settings.method
    configs, states, sources = {}, {}, {}
    for name in classes:
        path = folder / name / f"{name}.pt"
        configs[name], states[name] = read_stgan_discriminator(path, name)
        index = folder / name / "generators.json"
        entry = json.loads(index.read_text()).get(name, {}) if index.is_file() else {}
        sources[name] = {"file": str(path), "run_id": entry.get("run_id"), "version": entry.get("version")}
    return ClassExperts.from_discriminators(configs, states, settings.method, sources, where=str(folder))


def save_experts(bank: ClassExperts, folder: Path) -> Path:
    """Write ``folder/experts.pt``; shared frozen tensors are stored once (torch.save keeps shared storage)."""
    path = Path(folder) / EXPERTS_FILE
    torch.save(bank.payload(), path)
    return path


def load_experts(folder: Path | None, settings: ExpertSettings, arm: str = "arm") -> ClassExperts:
    """The bank in an arm's training-set folder; errors name the file and the stage to re-run."""
    path = Path(folder) / EXPERTS_FILE if folder is not None else Path(EXPERTS_FILE)
    if folder is None or not path.is_file():
        raise DermaganError(f"{path}: class experts not found; arm '{arm}' sets experts, so run "
                            f"`dvc repro validate_augmented@{arm}` (it copies the frozen discriminators there)")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("method") != settings.method or (
            settings.classes is not None and list(payload.get("classes", [])) != list(settings.classes)):
        raise DermaganError(f"{path}: holds {payload.get('method')} experts of {payload.get('classes')}, but arm "
                            f"'{arm}' asks for {settings}; re-run `dvc repro validate_augmented@{arm}`")
    return ClassExperts.from_saved(payload, where=str(path))
