"""GAN training loop, sectioned: fetch reals, D step, G step, EMA update, snapshot, checkpoint.

Progress is counted in images seen (as StyleGAN does), so schedules mean the same at any batch
size. Every random draw comes from one seeded generator (plus torch's global RNG for dropout,
which the checkpoint also saves), so a killed run resumes to the same result on CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torchvision.utils import make_grid

from dermagan.gan.diffaugment import diff_augment, parse_policy
from dermagan.gan.losses import check_loss, discriminator_loss, generator_loss
from dermagan.gan.models import Discriminator, Generator, init_weights
from dermagan.gan.configs import GanConfig  # noqa: F401 (re-exported)




def ema_beta(batch_size: int, half_life_images: int) -> float:
    """Per-step EMA decay so that the average has the given half-life in images."""
    return 0.5 ** (batch_size / max(half_life_images, 1))


class GanTrainer:
    """Holds G, D, the EMA generator, optimisers and RNG: everything a checkpoint restores."""

    def __init__(self, cfg: GanConfig, images: torch.Tensor, labels: torch.Tensor | None, device: torch.device):
        check_loss(cfg.loss)
        parse_policy(cfg.diffaugment)
        self.cfg, self.device = cfg, device
        self.images = images  # uint8 (N, 3, H, W), kept on CPU
        self.labels = labels if cfg.num_classes else None
        self.gen = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.G = Generator(cfg.image_size, cfg.latent_dim, cfg.ngf, cfg.num_classes).to(device)
        self.D = Discriminator(cfg.image_size, cfg.ndf, cfg.d_dropout, cfg.num_classes).to(device)
        self.G.apply(init_weights)
        self.D.apply(init_weights)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg.lr_g, betas=(cfg.beta1, cfg.beta2))
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg.lr_d, betas=(cfg.beta1, cfg.beta2))
        fixed = torch.Generator().manual_seed(cfg.seed + 1)
        self.fixed_z = torch.randn(cfg.grid_size, cfg.latent_dim, generator=fixed)
        self.fixed_y = torch.arange(cfg.grid_size) % cfg.num_classes if cfg.num_classes else None
        self.images_seen, self.step_count = 0, 0

    # --- one iteration ------------------------------------------------------------------
    def fetch_reals(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.randint(len(self.images), (self.cfg.batch_size,), generator=self.gen)
        reals = self.images[idx].float().div(127.5).sub(1).to(self.device)
        return reals, None if self.labels is None else self.labels[idx].to(self.device)

    def sample_latents(self, n: int) -> torch.Tensor:
        return torch.randn(n, self.cfg.latent_dim, generator=self.gen).to(self.device)

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.diffaugment:
            return x
        return diff_augment(x, self.cfg.diffaugment, self.gen, getattr(self.cfg, "diffaugment_p", 1.0))

    def discriminator_step(self, reals: torch.Tensor, y: torch.Tensor | None) -> float:
        with torch.no_grad():
            fakes = self.G(self.sample_latents(len(reals)), y)
        real_scores = self.D(self.augment(reals), y)
        fake_scores = self.D(self.augment(fakes), y)
        loss = discriminator_loss(real_scores, fake_scores, self.cfg.loss, 1.0 - self.cfg.label_smoothing)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_d.step()
        return loss.item()

    def generator_step(self, y: torch.Tensor | None) -> float:
        fakes = self.G(self.sample_latents(self.cfg.batch_size), y)
        loss = generator_loss(self.D(self.augment(fakes), y), self.cfg.loss)
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return loss.item()

    @torch.no_grad()
    def update_ema(self) -> None:
        beta = ema_beta(self.cfg.batch_size, self.cfg.ema_half_life_images)
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1 - beta)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    def step(self) -> dict[str, float]:
        reals, y = self.fetch_reals()
        d_loss = self.discriminator_step(reals, y)
        g_loss = self.generator_step(y)
        self.update_ema()
        self.images_seen += self.cfg.batch_size
        self.step_count += 1
        return {"gan/d_loss": d_loss, "gan/g_loss": g_loss}

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """EMA generator on the fixed noise: a (3, H, W) image grid in [0, 1].

        Runs on a forked, fixed-seeded RNG: a generator that injects noise (FastGAN) neither takes
        draws from the training stream (so snapshot settings cannot change the trained weights)
        nor gets a different grid each time.
        """
        y = None if self.fixed_y is None else self.fixed_y.to(self.device)
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed + 2)
            fakes = self.G_ema(self.fixed_z.to(self.device), y).cpu()
        return make_grid(fakes, nrow=int(len(fakes) ** 0.5), normalize=True, value_range=(-1, 1))

    # --- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "gen": self.gen.get_state(),
                "torch_rng": torch.get_rng_state(), "images_seen": self.images_seen,
                "step": self.step_count, "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        self.images_seen, self.step_count = state["images_seen"], state["step"]


def save_gan_checkpoint(trainer: GanTrainer, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(trainer.state_dict(), tmp)
    tmp.replace(path)


def resume_gan(trainer: GanTrainer, path: Path) -> bool:
    """Load ``path`` into ``trainer`` if it exists and was written with the same config."""
    if not path.exists():
        return False
    state = torch.load(path, map_location=trainer.device, weights_only=True)
    if state["config"] != asdict(trainer.cfg):
        return False
    trainer.load_state_dict(state)
    return True


def crossed(before: int, after: int, every: int) -> bool:
    """Whether going from ``before`` to ``after`` images passes a multiple of ``every`` (a schedule point)."""
    return every > 0 and before // every != after // every


def train_gan(
    trainer: GanTrainer,
    checkpoint: Path | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    on_snapshot: Callable[[int, torch.Tensor], None] | None = None,
    stop_after_images: int | None = None,
) -> GanTrainer:
    """Run until ``total_images`` (or ``stop_after_images``); snapshot and checkpoint on schedule."""
    cfg = trainer.cfg
    limit = min(cfg.total_images, stop_after_images or cfg.total_images)
    while trainer.images_seen < limit:
        before = trainer.images_seen
        losses = trainer.step()
        if on_step:
            on_step(trainer.images_seen, losses)
        if on_snapshot and crossed(before, trainer.images_seen, cfg.snapshot_every_images):
            on_snapshot(trainer.images_seen, trainer.sample_grid())
        if checkpoint and crossed(before, trainer.images_seen, cfg.checkpoint_every_images):
            save_gan_checkpoint(trainer, checkpoint)
    if checkpoint and trainer.images_seen >= cfg.total_images:
        save_gan_checkpoint(trainer, checkpoint)
    return trainer
