"""One small factory for every generator and discriminator, the way timm's ``create_model`` works.

``create_generator("fastgan", image_size=64, ...)`` and ``create_discriminator("projected", ...)``
look the name up in a registry; a new architecture registers itself with ``register_generator`` /
``register_discriminator`` and every stage can use it by name from params.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dermagan.errors import DermaganError

_GENERATORS: dict[str, Callable[..., nn.Module]] = {}
_DISCRIMINATORS: dict[str, Callable[..., nn.Module]] = {}


def register_generator(name: str, build: Callable[..., nn.Module]) -> None:
    _GENERATORS[name] = build


def register_discriminator(name: str, build: Callable[..., nn.Module]) -> None:
    _DISCRIMINATORS[name] = build


def _builtins() -> None:
    """Register the built-in networks (imported lazily: the projected D loads timm)."""
    if _GENERATORS:
        return
    from dermagan.gan.fastgan import FastGanGenerator
    from dermagan.gan.fastgan_d import FastGanDiscriminator
    from dermagan.gan.models import Discriminator, Generator
    from dermagan.gan.projected import ProjectedDiscriminator

    register_generator("dcgan", lambda image_size, latent_dim, ngf, num_classes: Generator(
        image_size, latent_dim, ngf, num_classes))
    register_generator("fastgan", lambda image_size, latent_dim, ngf, num_classes: FastGanGenerator(
        image_size, latent_dim, ngf, num_classes))
    register_discriminator("dcgan", lambda image_size, ndf, num_classes, **_: Discriminator(
        image_size, ndf, 0.3, num_classes))
    register_discriminator("projected", lambda image_size, ndf, num_classes, feature_size=None, seed=0:
                           ProjectedDiscriminator(image_size=image_size, ndf=ndf, num_classes=num_classes,
                                                  feature_size=feature_size, seed=seed))
    register_discriminator("fastgan", lambda image_size, ndf, num_classes, feature_size=None, seed=0:
                           FastGanDiscriminator(image_size=image_size, ndf=ndf, num_classes=num_classes, seed=seed))


def generator_names() -> list[str]:
    _builtins()
    return sorted(_GENERATORS)


def discriminator_names() -> list[str]:
    _builtins()
    return sorted(_DISCRIMINATORS)


def create_generator(name: str, **kwargs) -> nn.Module:
    _builtins()
    if name not in _GENERATORS:
        raise DermaganError(f"params: unknown generator '{name}'; choose one of {sorted(_GENERATORS)}")
    return _GENERATORS[name](**kwargs)


def create_discriminator(name: str, **kwargs) -> nn.Module:
    _builtins()
    if name not in _DISCRIMINATORS:
        raise DermaganError(f"params: unknown discriminator '{name}'; choose one of {sorted(_DISCRIMINATORS)}")
    return _DISCRIMINATORS[name](**kwargs)
