"""The real **train** images each GAN method trains on (val and test are never read here).

Images are uint8 NCHW tensors (kept on the CPU; the trainers move batches). ``task_classes`` is the
task's ordered label set: the prepared split's integer labels index it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dermagan.data.prepared import SplitArrays
from dermagan.errors import DermaganError


def nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> uint8 (N, 3, H, W) tensor."""
    return torch.from_numpy(images).permute(0, 3, 1, 2)


def dcgan_training_sets(train: SplitArrays, classes: list[str], task_classes: Sequence[str],
                        conditional: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]]:
    """Generator name -> (images, label index within the GAN's classes, classes).

    ``conditional``: one set ``"conditional"`` of every class in ``classes``; else one set per class.
    """
    images = nchw(train.images)
    wanted = [list(task_classes).index(c) for c in classes]
    if conditional:
        from dermagan.gan.methods import CONDITIONAL_NAME

        mask = np.isin(train.labels, wanted)
        lookup = np.full(len(task_classes), -1)
        lookup[wanted] = np.arange(len(wanted))
        local = torch.from_numpy(lookup[train.labels[mask]])
        return {CONDITIONAL_NAME: (images[torch.from_numpy(mask)], local, list(classes))}
    sets = {}
    for name, index in zip(classes, wanted):
        mask = torch.from_numpy(train.labels == index)
        sets[name] = (images[mask], torch.zeros(int(mask.sum()), dtype=torch.long), [name])
    return sets


def class_train_images(train: SplitArrays, dx: str | None, task_classes: Sequence[str],
                       where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All train images (``dx`` None) or those of class ``dx``, and their task labels (STGAN stages)."""
    images, labels = nchw(train.images), torch.from_numpy(train.labels).long()
    if dx is None:
        return images, labels
    mask = labels == list(task_classes).index(dx)
    if not bool(mask.any()):
        raise DermaganError(f"no real train images of class '{dx}' in {where}")
    return images[mask], labels[mask]


def domain_images(train: SplitArrays, source_class: str, dx: str, task_classes: Sequence[str],
                  where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Train images of the source class (domain A) and of ``dx`` (domain B), for a CycleGAN."""
    images = nchw(train.images)
    out = []
    for name in (source_class, dx):
        mask = torch.from_numpy(train.labels == list(task_classes).index(name))
        if not bool(mask.any()):
            raise DermaganError(f"no real train images of class '{name}' in {where}")
        out.append(images[mask])
    return out[0], out[1]
