"""STGAN self-transfer training of a FastGAN generator against a switchable discriminator.

Stage 1 trains one generator (conditional on all 7 classes, or not) on every real train image, so
it learns what skin and lesions look like from thousands of images. Stage 2 starts one copy per
augmented class from stage 1 and fine-tunes it on that class alone, with

- Freeze-D (Mo et al., 2020): the first ``freeze_d_blocks`` trainable blocks of D stay fixed
  (the projected D's feature network and random projections are always fixed);
- Barlow Twins (Zbontar et al., 2021): D's features of two DiffAugment views of the same real
  image are pulled towards an identity cross-correlation, weight ``barlow_weight``.

Everything else is the recipe of both papers: hinge loss, DiffAugment on every D input, EMA of G
with a half-life in images, Adam. The loop, EMA, checkpoints and resume are ``GanTrainer``'s.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from dermagan.errors import DermaganError
from dermagan.gan.diffaugment import parse_policy
from dermagan.gan.factory import create_discriminator, create_generator
from dermagan.gan.losses import barlow_twins_loss, discriminator_loss
from dermagan.gan.train import GanTrainer
from dermagan.gan.configs import StganConfig  # noqa: F401 (re-exported)


STGAN_DISCRIMINATORS = ("projected", "fastgan")




class StganTrainer(GanTrainer):
    """A ``GanTrainer`` whose G and D come from the factory, with aux, Freeze-D and Barlow Twins terms."""

    def __init__(self, cfg: StganConfig, images: torch.Tensor, labels: torch.Tensor | None, device: torch.device,
                 init: dict | None = None):
        if cfg.discriminator not in STGAN_DISCRIMINATORS:
            raise DermaganError(f"params: gan.stgan.net.discriminator must be one of {STGAN_DISCRIMINATORS}, got "
                                f"'{cfg.discriminator}' (the DCGAN D has no Freeze-D blocks or Barlow features)")
        if cfg.loss != "hinge":
            raise DermaganError(f"params: STGAN trains with the hinge loss, got loss '{cfg.loss}'")
        parse_policy(cfg.diffaugment)
        self.cfg, self.device = cfg, device
        self.images = images
        self.labels = labels if cfg.num_classes else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.G = create_generator("fastgan", image_size=cfg.image_size, latent_dim=cfg.latent_dim, ngf=cfg.ngf,
                                  num_classes=cfg.num_classes).to(device)
        self.D = create_discriminator(cfg.discriminator, image_size=cfg.image_size, ndf=cfg.ndf,
                                      num_classes=cfg.num_classes, feature_size=cfg.feature_size,
                                      seed=cfg.seed).to(device)
        if init is not None:  # stage 2: start from stage 1's G, EMA G and D
            self.G.load_state_dict(init["G"])
            self.D.load_state_dict(init["D"])
        self.frozen = self.D.freeze_blocks(cfg.freeze_d_blocks) if cfg.freeze_d_blocks else []
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        if init is not None:
            self.G_ema.load_state_dict(init["G_ema"])
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(list(self.D.trainable_parameters()), cfg.lr_d, betas=betas)
        fixed = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(cfg.grid_size, cfg.latent_dim, generator=fixed)
        if cfg.num_classes:
            self.fixed_y = (torch.full((cfg.grid_size,), cfg.fixed_label) if cfg.fixed_label is not None
                            else torch.arange(cfg.grid_size) % cfg.num_classes)
        else:
            self.fixed_y = None
        self.images_seen, self.step_count = 0, 0
        self.last_terms: dict[str, float] = {}

    def discriminator_step(self, reals: torch.Tensor, y: torch.Tensor | None) -> float:
        with torch.no_grad():
            fakes = self.G(self.sample_latents(len(reals)), y)
        view = self.augment(reals)
        real_scores = self.D(view, y)
        fake_scores = self.D(self.augment(fakes), y)
        adversarial = discriminator_loss(real_scores, fake_scores, "hinge")
        loss = adversarial
        terms = {"gan/d_adv": adversarial.item()}
        if self.cfg.aux_weight:
            aux = self.D.aux_loss(view, self.gen)
            loss = loss + self.cfg.aux_weight * aux
            terms["gan/d_aux"] = aux.item()
        if self.cfg.barlow_weight:
            barlow = barlow_twins_loss(self.D.barlow_features(view), self.D.barlow_features(self.augment(reals)),
                                       self.cfg.barlow_lambda)
            loss = loss + self.cfg.barlow_weight * barlow
            terms["gan/d_barlow"] = barlow.item()
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        self.last_terms = terms
        return loss.item()

    def step(self) -> dict[str, float]:
        losses = super().step()
        return {**losses, **self.last_terms}


def stage_one_state(path: Path) -> dict:
    """The stage-1 weights (G, EMA G, D) and config a stage-2 run starts from."""
    if not Path(path).exists():
        raise DermaganError(f"stage-1 generator not found: {path} (run the train_stgan_base stage first)")
    return torch.load(path, map_location="cpu", weights_only=True)


def check_stage_one(saved_config: dict, cfg: StganConfig, path: Path) -> None:
    """Refuse a stage-1 file (``path``, config ``saved_config``) trained with other network settings than
    the stage-2 ``cfg``: every ``gan.stgan.net`` key but the ones a stage may override, and the image size
    and number of classes, must be equal."""
    from dermagan.gan.methods import STGAN_NET_KEYS, STGAN_OVERRIDABLE

    stage1_cfg = {k: v for k, v in saved_config.items()
                  if (k in STGAN_NET_KEYS and k not in STGAN_OVERRIDABLE) or k in ("image_size", "num_classes")}
    mine = {k: v for k, v in asdict(cfg).items() if k in stage1_cfg}
    if mine != stage1_cfg:
        changed = sorted(k for k in stage1_cfg if stage1_cfg[k] != mine.get(k))
        raise DermaganError(f"{path} was trained with other gan.stgan.net settings ({changed}); "
                            "re-run the train_stgan_base stage (dvc repro does)")
