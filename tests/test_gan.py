"""DCGAN pieces on tiny data: finite losses, weights move, DiffAugment on reals and fakes, exact resume."""

import pytest
import torch

from dermagan.errors import DermaganError
from dermagan.gan.diffaugment import cutout, diff_augment, translation
from dermagan.gan.models import Discriminator, Generator
from dermagan.gan.train import GanConfig, GanTrainer, ema_beta, resume_gan, train_gan


def tiny_data(n: int = 24, size: int = 16):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 3


def config(**kw) -> GanConfig:
    base = dict(image_size=16, latent_dim=8, ngf=8, ndf=8, batch_size=4, total_images=24,
                ema_half_life_images=16, snapshot_every_images=8, checkpoint_every_images=8, grid_size=4)
    return GanConfig(**{**base, **kw})


@pytest.mark.parametrize("num_classes", [None, 3])
def test_shapes(num_classes):
    y = torch.tensor([0, 2]) if num_classes else None
    fake = Generator(32, 8, 8, num_classes)(torch.randn(2, 8), y)
    assert fake.shape == (2, 3, 32, 32) and fake.abs().max() <= 1
    assert Discriminator(32, 8, 0.3, num_classes)(fake, y).shape == (2,)


@pytest.mark.parametrize("loss,conditional", [("hinge", False), ("non_saturating", True)])
def test_a_step_gives_finite_losses_and_moves_weights(loss, conditional):
    images, labels = tiny_data()
    trainer = GanTrainer(config(loss=loss, num_classes=3 if conditional else None, label_smoothing=0.1),
                         images, labels, torch.device("cpu"))
    g_before = [p.clone() for p in trainer.G.parameters()]
    d_before = [p.clone() for p in trainer.D.parameters()]
    ema_before = [p.clone() for p in trainer.G_ema.parameters()]
    losses = trainer.step()
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(g_before, trainer.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d_before, trainer.D.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(ema_before, trainer.G_ema.parameters()))
    assert trainer.images_seen == 4


def test_diffaugment_applies_to_reals_and_fakes_in_both_steps(monkeypatch):
    """Every D input goes through augment(); the D sees augmented, not raw, tensors."""
    images, labels = tiny_data()
    trainer = GanTrainer(config(diffaugment="cutout"), images, labels, torch.device("cpu"))
    seen, augmented = [], []
    original = trainer.augment

    def spy_augment(x):
        out = original(x)
        augmented.append(out)
        return out

    d_forward = trainer.D.forward
    monkeypatch.setattr(trainer, "augment", spy_augment)
    monkeypatch.setattr(trainer.D, "forward", lambda x, y=None: (seen.append(x), d_forward(x, y))[1])
    trainer.step()
    assert len(seen) == 3  # D step: real + fake; G step: fake
    assert all(s is a for s, a in zip(seen, augmented))
    assert all((s == 0).all(dim=1).any() for s in seen)  # a cutout hole in every input


def test_diffaugment_ops_are_per_image_and_differentiable():
    x = torch.ones(6, 3, 16, 16, requires_grad=True)
    g = torch.Generator().manual_seed(1)
    out = diff_augment(x, "color,translation,cutout", g)
    out.sum().backward()
    assert x.grad is not None and out.shape == x.shape
    holes = cutout(torch.ones(6, 3, 16, 16), torch.Generator().manual_seed(2))
    assert len({tuple((h[0] == 0).nonzero()[0].tolist()) for h in holes}) > 1
    shifted = translation(torch.ones(6, 3, 16, 16), torch.Generator().manual_seed(3))
    assert (shifted == 0).any()
    with pytest.raises(DermaganError, match="unknown DiffAugment policy"):
        diff_augment(x, "color,mixup", g)


def test_ema_half_life():
    assert ema_beta(32, 32) == pytest.approx(0.5)
    assert ema_beta(32, 10_000) ** (10_000 / 32) == pytest.approx(0.5)


def test_killed_run_resumes_to_the_same_result(tmp_path):
    images, labels = tiny_data()
    full = train_gan(GanTrainer(config(), images, labels, torch.device("cpu")))
    ckpt = tmp_path / "gan.pt"
    first = GanTrainer(config(), images, labels, torch.device("cpu"))
    train_gan(first, ckpt, stop_after_images=12)  # "killed" after 12 images; checkpoint at 8
    resumed = GanTrainer(config(), images, labels, torch.device("cpu"))
    assert resume_gan(resumed, ckpt) and resumed.images_seen == 8
    train_gan(resumed, ckpt)
    for name in ("G", "D", "G_ema"):
        for a, b in zip(getattr(full, name).state_dict().values(), getattr(resumed, name).state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not resume_gan(GanTrainer(config(seed=5), images, labels, torch.device("cpu")), ckpt)


def test_snapshots_every_n_images():
    images, labels = tiny_data()
    grids = []
    train_gan(GanTrainer(config(), images, labels, torch.device("cpu")), on_snapshot=lambda n, g: grids.append((n, g)))
    assert [n for n, _ in grids] == [8, 16, 24]
    assert grids[0][1].shape[0] == 3 and 0 <= grids[0][1].min() and grids[0][1].max() <= 1


def test_bad_settings():
    images, labels = tiny_data()
    with pytest.raises(DermaganError, match="power of two"):
        Generator(48)
    with pytest.raises(DermaganError, match="GAN loss"):
        GanTrainer(config(loss="wasserstein"), images, labels, torch.device("cpu"))
