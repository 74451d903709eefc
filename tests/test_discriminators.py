"""Projected and FastGAN discriminators: shapes, frozen parts staying frozen, Freeze-D, reconstruction loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dermagan.errors import DermaganError
from dermagan.gan.fastgan_d import FastGanDiscriminator
from dermagan.gan.projected import FrozenEfficientNetLite0, ProjectedDiscriminator

N = 4
SMALL = {"ndf": 8}
PROJ = {"ndf": 8, "proj_channels": 8, "cmap_dim": 16}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One BLAS thread: on a shared 2-core machine two threads spin and run ~100x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def frozen_net() -> FrozenEfficientNetLite0:
    """The packaged ImageNet EfficientNet-Lite0, loaded once and shared (it is never changed)."""
    return FrozenEfficientNetLite0()


def images(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(N, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def labels(num_classes: int | None) -> torch.Tensor | None:
    return torch.arange(N) % num_classes if num_classes else None


def snapshot(named) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in named}


def hinge_d_step(D: nn.Module, opt: torch.optim.Optimizer, fake_maker: nn.Module, size: int, step: int,
                 y: torch.Tensor | None = None, aux: bool = False) -> None:
    """One D step; the fakes come from a tiny 'generator' and keep their graph (backward goes through D)."""
    reals = images(size, 100 + step)
    fakes = torch.tanh(fake_maker(torch.randn(N, 3, size, size)))
    loss = F.relu(1 - D(reals, y)).mean() + F.relu(1 + D(fakes, y)).mean()
    if aux:
        loss = loss + D.aux_loss(reals, torch.Generator().manual_seed(step))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_projected_output_shapes(frozen_net, size, num_classes):
    D = ProjectedDiscriminator(size, num_classes=num_classes, feature_net=frozen_net, **PROJ)
    out = D(images(size), labels(num_classes))
    assert out.shape == (N, 4)  # every scale ends at one logit
    assert torch.isfinite(out).all()
    assert D.image_size == size and D.num_classes == num_classes
    D.eval()  # eval: BN and spectral norm are deterministic, so forward == head(forward_features)
    feats = D.forward_features(images(size))
    assert [f.shape[-1] for f in feats] == D.map_sizes
    assert torch.equal(D.head(feats, labels(num_classes)), D(images(size), labels(num_classes)))
    assert D.barlow_features(images(size)).shape == (N, sum(d.out_channels for d in D.discs))


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("num_classes", [None, 3])
def test_fastgan_output_shapes(frozen_net, size, num_classes):
    D = FastGanDiscriminator(size, num_classes=num_classes, feature_net=frozen_net, **SMALL)
    out = D(images(size), labels(num_classes))
    assert out.shape == (N, 25)  # 5x5 patch logits over the 8x8 map
    assert torch.isfinite(out).all()
    assert D.image_size == size and D.num_classes == num_classes
    assert [f.shape[-1] for f in D.forward_features(images(size))] == [16, 8]
    assert D.barlow_features(images(size)).shape == (N, SMALL["ndf"] * min(8, size // 8))


def test_projected_frozen_parts_stay_bit_identical(frozen_net):
    torch.manual_seed(0)
    D = ProjectedDiscriminator(64, feature_net=frozen_net, **PROJ).train()
    assert not D.features.training  # train() keeps the frozen network in eval mode
    frozen = snapshot([*D.features.state_dict().items(), *D.projection.state_dict().items()])
    trainable = snapshot(D.discs.named_parameters())
    trainable_ids = {id(p) for p in D.trainable_parameters()}
    assert trainable_ids == {id(p) for p in D.discs.parameters()}
    assert not trainable_ids & {id(p) for p in [*D.features.parameters(), *D.projection.parameters()]}
    fake_maker = nn.Conv2d(3, 3, 3, padding=1)
    opt = torch.optim.Adam(D.trainable_parameters(), lr=1e-2)
    for step in range(3):
        hinge_d_step(D, opt, fake_maker, 64, step)
    after = dict([*D.features.state_dict().items(), *D.projection.state_dict().items()])
    for name, tensor in frozen.items():  # weights and BN running statistics alike
        assert torch.equal(after[name], tensor), name
    assert all(p.grad is None for p in [*D.features.parameters(), *D.projection.parameters()])
    changed = [name for name, p in D.discs.named_parameters() if not torch.equal(p, trainable[name])]
    assert len(changed) == len(trainable)
    assert fake_maker.weight.grad is not None and fake_maker.weight.grad.abs().sum() > 0


def test_projections_are_seeded(frozen_net):
    a = ProjectedDiscriminator(64, feature_net=frozen_net, seed=3, **PROJ).projection.state_dict()
    b = ProjectedDiscriminator(64, feature_net=frozen_net, seed=3, **PROJ).projection.state_dict()
    c = ProjectedDiscriminator(64, feature_net=frozen_net, seed=4, **PROJ).projection.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_gradients_reach_the_input_through_the_frozen_net(frozen_net):
    D = ProjectedDiscriminator(64, feature_net=frozen_net, **PROJ)
    x = images(64).requires_grad_(True)
    D(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in [*D.features.parameters(), *D.projection.parameters()])
    # Reals (no grad wanted) go through the frozen part without building a graph.
    assert all(f.grad_fn is None for f in D.forward_features(images(64)))
    assert all(f.grad_fn is not None for f in D.forward_features(images(64).requires_grad_(True)))


def test_feature_size_128_on_64px_images(frozen_net):
    D = ProjectedDiscriminator(64, feature_size=128, num_classes=2, feature_net=frozen_net, **PROJ)
    assert D.map_sizes == [32, 16, 8, 4]
    x = images(64).requires_grad_(True)
    out = D(x, labels(2))
    assert out.shape == (N, 4)
    out.mean().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind,k", [("projected", 1), ("fastgan", 2)])
def test_freeze_blocks_keeps_named_parameters_fixed(frozen_net, kind, k):
    torch.manual_seed(0)
    if kind == "projected":
        D = ProjectedDiscriminator(64, feature_size=128, feature_net=frozen_net, **PROJ)
    else:
        D = FastGanDiscriminator(64, feature_net=frozen_net, **SMALL)
    D.train()
    names = D.freeze_blocks(k)
    params = dict(D.named_parameters())
    assert names and all(name in params and not params[name].requires_grad for name in names)
    D.requires_grad_(True)  # a loop toggling D's grads must not thaw frozen parts
    assert all(not params[name].requires_grad for name in names)
    assert all(not p.requires_grad for name, p in params.items() if name.startswith(("features.", "projection.",
                                                                                      "perceptual.")))
    frozen_ids = {id(params[name]) for name in names}
    assert not frozen_ids & {id(p) for p in D.trainable_parameters()}
    before = snapshot((name, params[name]) for name in names)
    others = snapshot((n, p) for n, p in params.items() if p.requires_grad)
    opt = torch.optim.Adam(D.trainable_parameters(), lr=1e-2)
    fake_maker = nn.Conv2d(3, 3, 3, padding=1)
    for step in range(3):
        hinge_d_step(D, opt, fake_maker, 64, step, aux=kind == "fastgan")
    assert all(torch.equal(params[name], before[name]) for name in names)
    assert any(not torch.equal(params[name], t) for name, t in others.items())
    with pytest.raises(DermaganError, match="freeze_d_blocks"):
        D.freeze_blocks(D.num_blocks() + 1)


def _downblock(prefix: str) -> list[str]:
    return [f"{prefix}.conv.parametrizations.weight.original", f"{prefix}.norm.weight", f"{prefix}.norm.bias"]


def _block_comp(prefix: str) -> list[str]:
    return [f"{prefix}.{name}" for name in (
        "main.0.parametrizations.weight.original", "main.1.weight", "main.1.bias",
        "main.3.parametrizations.weight.original", "main.4.weight", "main.4.bias",
        "direct.1.parametrizations.weight.original", "direct.2.weight", "direct.2.bias")]


# What each D's own freeze_blocks froze before Freeze-D became one mechanism (recorded with that code).
FROZEN_BEFORE = {
    ("projected", 64, None, 1): [n for i in range(4) for n in _downblock(f"discs.{i}.blocks.0")],
    ("projected", 64, None, 2): [*_downblock("discs.0.blocks.0"), *_downblock("discs.0.blocks.1"),
                                 *(n for i in (1, 2, 3) for n in _downblock(f"discs.{i}.blocks.0"))],
    ("projected", 64, 3, 1): [n for i in range(4) for n in _downblock(f"discs.{i}.blocks.0")],
    ("projected", 32, None, 1): [n for i in range(4) for n in _downblock(f"discs.{i}.blocks.0")],
    ("fastgan", 32, None, 1): ["blocks.0.0.parametrizations.weight.original"],
    ("fastgan", 32, 3, 3): ["blocks.0.0.parametrizations.weight.original", *_block_comp("blocks.1"),
                            *_block_comp("blocks.2")],
    ("fastgan", 64, None, 2): ["blocks.0.0.parametrizations.weight.original", *_block_comp("blocks.1")],
}
# (number of Freeze-D blocks, trainable tensors after freezing) recorded with the same code
COUNTS_BEFORE = {("projected", 64, None, 1): (2, 7), ("projected", 64, None, 2): (2, 4),
                 ("projected", 64, 3, 1): (2, 19), ("projected", 32, None, 1): (1, 4),
                 ("fastgan", 32, None, 1): (3, 30), ("fastgan", 32, 3, 3): (3, 13), ("fastgan", 64, None, 2): (4, 36)}


@pytest.mark.parametrize("kind,size,num_classes,k", list(FROZEN_BEFORE), ids=lambda v: str(v))
def test_freeze_d_is_one_mechanism_and_freezes_what_each_d_froze_before(frozen_net, kind, size, num_classes, k):
    from dermagan.gan.freeze import FreezeDMixin

    if kind == "projected":
        D = ProjectedDiscriminator(size, num_classes=num_classes, feature_net=frozen_net, **PROJ)
    else:
        D = FastGanDiscriminator(size, num_classes=num_classes, feature_net=frozen_net, **SMALL)
    assert isinstance(D, FreezeDMixin)
    for name in ("freeze_blocks", "num_blocks", "requires_grad_", "trainable_parameters"):
        assert getattr(type(D), name) is getattr(FreezeDMixin, name), f"{type(D).__name__} overrides {name}"
    names = D.freeze_blocks(k)
    assert names == FROZEN_BEFORE[(kind, size, num_classes, k)]
    D.requires_grad_(True)
    always = ("features.", "projection.", "perceptual.")
    fixed = [n for n, p in D.named_parameters() if not p.requires_grad and not n.startswith(always)]
    assert sorted(fixed) == sorted(names)
    assert (D.num_blocks(), sum(1 for _ in D.trainable_parameters())) == COUNTS_BEFORE[(kind, size, num_classes, k)]


def test_fastgan_aux_loss_trains_the_decoders(frozen_net):
    D = FastGanDiscriminator(64, feature_net=frozen_net, **SMALL)
    loss = D.aux_loss(images(64), torch.Generator().manual_seed(0))
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    for decoder in (D.decoder_big, D.decoder_part):
        grads = [p.grad for p in decoder.parameters()]
        assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in D.perceptual.parameters())
    D.eval()  # same quadrant for the same generator seed
    a = D.aux_loss(images(64), torch.Generator().manual_seed(5))
    b = D.aux_loss(images(64), torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_projected_aux_loss_is_zero(frozen_net):
    D = ProjectedDiscriminator(32, feature_net=frozen_net, **PROJ)
    assert D.aux_loss(images(32), torch.Generator()).item() == 0.0


def test_bad_arguments_name_the_field(frozen_net):
    with pytest.raises(DermaganError, match="feature_size"):
        ProjectedDiscriminator(64, feature_size=16, feature_net=frozen_net)
    with pytest.raises(DermaganError, match="proj_channels"):
        ProjectedDiscriminator(64, proj_channels=0, feature_net=frozen_net)
    with pytest.raises(DermaganError, match="image_size"):
        FastGanDiscriminator(48, feature_net=frozen_net)
    with pytest.raises(DermaganError, match="num_classes"):
        FastGanDiscriminator(64, num_classes=0, feature_net=frozen_net)
    D = FastGanDiscriminator(32, feature_net=frozen_net, **SMALL)
    with pytest.raises(ValueError, match="32"):
        D(images(64))
