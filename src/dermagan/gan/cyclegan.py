"""CycleGAN (Zhu et al., ICCV 2017): translate real nv train images into a rare class.

Two generators, ``G_AB`` (domain A = the source class, nv -> domain B = the target class) and
``G_BA``, and two PatchGAN discriminators, ``D_A`` and ``D_B``. G is the ResNet-block generator
of the paper sized for 64 px (c7s1-ngf, two stride-2 downsamples, ``n_blocks`` residual blocks,
two upsamples, c7s1-3 + tanh; instance norm, reflection padding); D is the 70x70-style PatchGAN
(three stride-2 convs, one stride-1 conv, a 1-channel conv: a 6x6 patch map at 64 px).

Losses are the paper's: least-squares GAN (here with one-sided label smoothing on D's real
target), cycle consistency L1 (weight ``lambda_cycle``) and identity L1 (weight ``lambda_identity``
x ``lambda_cycle``); D learns from a history pool of 50 past fakes; Adam, with the learning rate
decaying linearly to 0 over the last half of training.

Progress is counted in target-class (domain B) images shown to ``D_B``. Every random draw comes
from a seeded ``torch.Generator`` (batch indices of each domain, each pool), all saved in the
checkpoint, and nothing draws from torch's global RNG while training, so a killed run resumes
bit-identically on CPU. The loop, snapshots and atomic checkpoints are ``gan.train.train_gan``,
``save_gan_checkpoint`` and ``resume_gan``: ``CycleGanTrainer`` follows the same protocol
(``cfg``, ``images_seen``, ``step``, ``sample_grid``, ``state_dict``, ``load_state_dict``).
Images come in as uint8 NCHW tensors and are scaled to [-1, 1] inside.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.utils import make_grid

from dermagan.errors import DermaganError
from dermagan.gan.configs import CycleGanConfig, check_config  # noqa: F401 (re-exported)

GENERATOR_NAME = "cyclegan"






# --- networks ----------------------------------------------------------------------------------
class ResnetBlock(nn.Module):
    """x + (reflect-pad, conv3x3, IN, ReLU, reflect-pad, conv3x3, IN)(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Image -> image in [-1, 1], (N, 3, H, W) -> (N, 3, H, W); H and W multiples of 4.

    Instance norm without running statistics: train and eval mode compute the same thing, and
    each image is translated independently of the others in its batch.
    """

    def __init__(self, ngf: int = 32, n_blocks: int = 6):
        super().__init__()
        self.ngf, self.n_blocks = int(ngf), int(n_blocks)
        layers = [nn.ReflectionPad2d(3), nn.Conv2d(3, ngf, 7), nn.InstanceNorm2d(ngf), nn.ReLU(True)]
        for mult in (1, 2):  # 64 -> 32 -> 16 px at 64 px input
            layers += [nn.Conv2d(ngf * mult, ngf * mult * 2, 3, stride=2, padding=1),
                       nn.InstanceNorm2d(ngf * mult * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for mult in (4, 2):
            layers += [nn.ConvTranspose2d(ngf * mult, ngf * mult // 2, 3, stride=2, padding=1, output_padding=1),
                       nn.InstanceNorm2d(ngf * mult // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: C(ndf, s2, no norm) - C(2ndf, s2) - C(4ndf, s2) - C(8ndf, s1) - conv to 1 channel.

    4x4 convs, LeakyReLU 0.2, instance norm; (N, 3, 64, 64) -> a (N, 1, 6, 6) map of raw scores,
    each judging one overlapping patch.
    """

    def __init__(self, ndf: int = 64):
        super().__init__()
        layers, channels = [nn.Conv2d(3, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)], ndf
        for out, stride in ((ndf * 2, 2), (ndf * 4, 2), (ndf * 8, 1)):
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1), nn.InstanceNorm2d(out),
                       nn.LeakyReLU(0.2, True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def init_weights(module: nn.Module) -> None:
    """N(0, 0.02) conv weights and zero biases, as the CycleGAN reference code does."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# --- losses --------------------------------------------------------------------------------------
def lsgan_discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor,
                             smoothing: float = 0.0) -> torch.Tensor:
    """0.5 * (mean((real - (1 - smoothing))^2) + mean(fake^2)): least squares, one-sided smoothing."""
    return 0.5 * ((real_scores - (1.0 - smoothing)).pow(2).mean() + fake_scores.pow(2).mean())


def lsgan_generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """mean((fake - 1)^2): G wants its fakes scored as real (never smoothed)."""
    return (fake_scores - 1.0).pow(2).mean()


def cycle_loss(real: torch.Tensor, reconstructed: torch.Tensor, lambda_cycle: float) -> torch.Tensor:
    """lambda_cycle * mean |real - G_other(G(real))|."""
    return lambda_cycle * (real - reconstructed).abs().mean()


def identity_loss(real: torch.Tensor, same: torch.Tensor, lambda_cycle: float,
                  lambda_identity: float) -> torch.Tensor:
    """lambda_identity * lambda_cycle * mean |real - G(real)| for an image already in G's target domain."""
    return lambda_identity * lambda_cycle * (real - same).abs().mean()


# --- history pool --------------------------------------------------------------------------------
class ImagePool:
    """A buffer of past fakes (Shrivastava et al., 2017; size 50 in CycleGAN), drawn from a seeded generator.

    Until it holds ``size`` images every fake is stored and returned as is; after that each fake,
    with probability 1/2, is swapped for a random stored one (which is returned in its place).
    ``size`` 0 returns the fakes unchanged.
    """

    def __init__(self, size: int, seed: int):
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=self.gen).item() < 0.5:
                i = int(torch.randint(len(self.images), (1,), generator=self.gen))
                out.append(self.images[i])
                self.images[i] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict:
        stored = torch.stack(self.images) if self.images else torch.zeros(0)
        return {"images": stored, "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict, device: torch.device | None = None) -> None:
        stored = state["images"]
        self.images = [x.to(device) if device is not None else x for x in stored.unbind(0)] if stored.numel() else []
        self.gen.set_state(state["gen"])


# --- trainer -------------------------------------------------------------------------------------
def lr_factor(images_seen: int, total_images: int, decay_start: float) -> float:
    """1 until ``decay_start`` x total_images, then linearly down to 0 at total_images."""
    start = decay_start * total_images
    if images_seen < start or total_images <= start:
        return 1.0
    return max(0.0, 1.0 - (images_seen - start) / (total_images - start))


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float in [-1, 1]."""
    return images.float().div(127.5).sub(1)


class CycleGanTrainer:
    """G_AB, G_BA, D_A, D_B, their optimisers, both pools and the data-order generators.

    ``images_a`` are the source-class images (domain A), ``images_b`` the target class's, both
    uint8 (N, 3, H, W) on the CPU. ``step`` draws one batch from each domain.
    """

    def __init__(self, cfg: CycleGanConfig, images_a: torch.Tensor, images_b: torch.Tensor, device: torch.device):
        check_config(cfg)
        for name, x in (("images_a", images_a), ("images_b", images_b)):
            if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, cfg.image_size, cfg.image_size):
                raise DermaganError(f"{name}: expected uint8 (N, 3, {cfg.image_size}, {cfg.image_size}) images, "
                                    f"got {x.dtype} {tuple(x.shape)}")
            if not len(x):
                raise DermaganError(f"{name}: no images to train on")
        self.cfg, self.device = cfg, device
        self.images_a, self.images_b = images_a, images_b
        with torch.random.fork_rng(devices=[]):  # initialise from the seed, leave the caller's RNG alone
            torch.default_generator.manual_seed(cfg.seed)
            self.G_AB, self.G_BA = (ResnetGenerator(cfg.ngf, cfg.n_blocks) for _ in range(2))
            self.D_A, self.D_B = (PatchDiscriminator(cfg.ndf) for _ in range(2))
            for net in self.nets().values():
                net.apply(init_weights)
        for net in self.nets().values():
            net.to(device)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(itertools.chain(self.G_AB.parameters(), self.G_BA.parameters()), cfg.lr,
                                      betas=betas)
        self.opt_d = torch.optim.Adam(itertools.chain(self.D_A.parameters(), self.D_B.parameters()), cfg.lr,
                                      betas=betas)
        self.gen_a = torch.Generator().manual_seed(cfg.seed + 1)
        self.gen_b = torch.Generator().manual_seed(cfg.seed + 2)
        self.pool_a, self.pool_b = ImagePool(cfg.pool_size, cfg.seed + 3), ImagePool(cfg.pool_size, cfg.seed + 4)
        order = torch.randperm(len(images_a), generator=torch.Generator().manual_seed(cfg.seed + 5))
        self.grid_sources = images_a[order[:cfg.grid_size]]
        self.images_seen, self.step_count = 0, 0

    def nets(self) -> dict[str, nn.Module]:
        return {"G_AB": self.G_AB, "G_BA": self.G_BA, "D_A": self.D_A, "D_B": self.D_B}

    # --- one iteration ---------------------------------------------------------------------------
    def fetch(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        idx = torch.randint(len(images), (self.cfg.batch_size,), generator=gen)
        return to_unit(images[idx]).to(self.device)

    def generator_step(self, real_a: torch.Tensor, real_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        cfg = self.cfg
        for d in (self.D_A, self.D_B):
            d.requires_grad_(False)
        fake_b, fake_a = self.G_AB(real_a), self.G_BA(real_b)
        adv_ab, adv_ba = lsgan_generator_loss(self.D_B(fake_b)), lsgan_generator_loss(self.D_A(fake_a))
        cycle = cycle_loss(real_a, self.G_BA(fake_b), cfg.lambda_cycle) + cycle_loss(
            real_b, self.G_AB(fake_a), cfg.lambda_cycle)
        loss = adv_ab + adv_ba + cycle
        terms = {"gan/g_adv_ab": adv_ab.item(), "gan/g_adv_ba": adv_ba.item(), "gan/cycle": cycle.item()}
        if cfg.lambda_identity > 0:
            identity = (identity_loss(real_b, self.G_AB(real_b), cfg.lambda_cycle, cfg.lambda_identity)
                        + identity_loss(real_a, self.G_BA(real_a), cfg.lambda_cycle, cfg.lambda_identity))
            loss = loss + identity
            terms["gan/identity"] = identity.item()
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        for d in (self.D_A, self.D_B):
            d.requires_grad_(True)
        return fake_a.detach(), fake_b.detach(), {"gan/g_loss": loss.item(), **terms}

    def discriminator_step(self, real_a: torch.Tensor, real_b: torch.Tensor, fake_a: torch.Tensor,
                           fake_b: torch.Tensor) -> dict:
        smoothing = self.cfg.label_smoothing
        loss_a = lsgan_discriminator_loss(self.D_A(real_a), self.D_A(self.pool_a.query(fake_a)), smoothing)
        loss_b = lsgan_discriminator_loss(self.D_B(real_b), self.D_B(self.pool_b.query(fake_b)), smoothing)
        self.opt_d.zero_grad(set_to_none=True)
        (loss_a + loss_b).backward()
        self.opt_d.step()
        return {"gan/d_loss": loss_a.item() + loss_b.item(), "gan/d_a": loss_a.item(), "gan/d_b": loss_b.item()}

    def step(self) -> dict[str, float]:
        factor = lr_factor(self.images_seen, self.cfg.total_images, self.cfg.decay_start)
        for opt in (self.opt_g, self.opt_d):
            for group in opt.param_groups:
                group["lr"] = self.cfg.lr * factor
        real_a, real_b = self.fetch(self.images_a, self.gen_a), self.fetch(self.images_b, self.gen_b)
        fake_a, fake_b, g_terms = self.generator_step(real_a, real_b)
        d_terms = self.discriminator_step(real_a, real_b, fake_a, fake_b)
        self.images_seen += self.cfg.batch_size
        self.step_count += 1
        return {**d_terms, **g_terms, "gan/lr": self.cfg.lr * factor}

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """Fixed source images, each followed by its translation: a (3, H, W) grid in [0, 1]."""
        sources = to_unit(self.grid_sources).to(self.device)
        translated = self.G_AB(sources)
        pairs = torch.stack([sources, translated], 1).flatten(0, 1).cpu()
        per_row = 2 * max(1, int(np.ceil(len(sources) ** 0.5)))
        return make_grid(pairs, nrow=per_row, normalize=True, value_range=(-1, 1))

    # --- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {**{name: net.state_dict() for name, net in self.nets().items()},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "gen_a": self.gen_a.get_state(), "gen_b": self.gen_b.get_state(),
                "pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict(),
                "images_seen": self.images_seen, "step": self.step_count, "config": asdict(self.cfg)}

    def load_state_dict(self, state: dict) -> None:
        for name, net in self.nets().items():
            net.load_state_dict(state[name])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.gen_a.set_state(state["gen_a"])
        self.gen_b.set_state(state["gen_b"])
        self.pool_a.load_state_dict(state["pool_a"], self.device)
        self.pool_b.load_state_dict(state["pool_b"], self.device)
        self.images_seen, self.step_count = state["images_seen"], state["step"]


# --- the saved translator and generation ---------------------------------------------------------
def translator_file(trainer: CycleGanTrainer, target_class: str) -> dict:
    """What a train_cyclegan stage writes: the A->B generator, its config and the two classes."""
    return {"state_dict": {k: v.detach().cpu() for k, v in trainer.G_AB.state_dict().items()},
            "config": asdict(trainer.cfg), "classes": [target_class], "source_class": trainer.cfg.source_class,
            "generator": GENERATOR_NAME}


def load_translator(path: Path) -> tuple[ResnetGenerator, dict]:
    """The A->B generator written by ``translator_file`` (eval mode, on the CPU) and the saved dict."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"CycleGAN translator not found: {path} (run `dermagan train-cyclegan` first)")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("generator") != GENERATOR_NAME:
        kind = saved.get("generator", "dcgan") if isinstance(saved, dict) else type(saved).__name__
        raise DermaganError(f"{path}: not a CycleGAN translator (generator '{kind}')")
    cfg = saved["config"]
    g = ResnetGenerator(cfg["ngf"], cfg["n_blocks"])
    g.load_state_dict(saved["state_dict"])
    return g.eval(), saved


def choose_sources(n_available: int, n: int, seed: int) -> np.ndarray:
    """``n`` distinct indices into ``n_available`` source images, deterministic for ``seed``."""
    if n > n_available:
        raise DermaganError(f"need {n} distinct source images but only {n_available} exist; lower gan.amount or "
                            "gan.candidates_factor")
    return np.random.default_rng(seed).choice(n_available, size=n, replace=False)


@torch.no_grad()
def translate(generator: nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """uint8 (N, H, W, 3) -> uint8 (N, H, W, 3) through ``generator`` (no randomness: deterministic)."""
    device = next(generator.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        x = to_unit(torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2))
        y = generator(x.to(device))
        out.append(((y + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)
