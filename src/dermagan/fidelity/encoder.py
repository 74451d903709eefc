"""A domain feature encoder: a small CNN trained from scratch on real HAM10000 train images only.

The GAN's discriminator shaped what its images look like to the GAN, and ImageNet features see
dermoscopy as an unfamiliar texture; this encoder learnt only what separates the seven real
lesion classes. Distances in its 256-d penultimate space (``DOMAIN_SPACE``) measure generated
images in a space that nothing in the GAN was optimised against.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from dermagan.atomic import atomic_file
from dermagan.evaluate.metrics import balanced_accuracy
from dermagan.classify.inference import to_float_batch
from dermagan.classify.train import balanced_class_weights
from dermagan.errors import DermaganError

DOMAIN_SPACE = "domain-cnn-ham10000-train-penultimate256"
ENCODER_FILE = "encoder.pt"  # the file the domain_encoder stage writes in its folder (read by fidelity, tuning)
WIDTHS = (32, 64, 128, 256)
FEATURE_DIM = WIDTHS[-1]
MIN_SIZE = 2 ** len(WIDTHS)  # four 2x max-pools need at least 16 px
_FORMAT = "dermagan-domain-encoder-v1"


class DomainEncoder(nn.Module):
    """Four Conv3x3-BN-ReLU-MaxPool blocks (32, 64, 128, 256), global average pool, dropout, linear.

    Input: float (N, 3, H, W) in [0, 1]; it is normalised inside with the per-channel mean and std
    of the training images (buffers, saved with the weights). ``features`` gives the 256-d pooled
    vectors before dropout and the classifier; ``forward`` gives class logits.
    """

    def __init__(self, num_classes: int, image_size: tuple[int, int] | None = None, dropout: float = 0.2):
        super().__init__()
        if num_classes < 2:
            raise DermaganError(f"encoder: num_classes must be at least 2, got {num_classes}")
        self.num_classes, self.dropout_p = int(num_classes), float(dropout)
        self.image_size = None if image_size is None else (int(image_size[0]), int(image_size[1]))
        blocks, channels = [], 3
        for width in WIDTHS:
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(FEATURE_DIM, num_classes)
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    @property
    def config(self) -> dict:
        """Constructor arguments, as plain types (so a checkpoint loads with ``weights_only=True``)."""
        size = None if self.image_size is None else list(self.image_size)
        return {"num_classes": self.num_classes, "image_size": size, "dropout": self.dropout_p}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] -> (N, 256) penultimate vectors."""
        return self.pool(self.blocks((x - self.mean) / self.std)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


def check_images(images: np.ndarray, field: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise DermaganError(f"{field}: expected a uint8 array (N, H, W, 3), got {dtype} {shape}")
    if min(images.shape[1:3]) < MIN_SIZE:
        raise DermaganError(f"{field}: images must be at least {MIN_SIZE} px on each side, got {images.shape[1:3]}")
    return images


def check_labels(labels: np.ndarray, n: int, num_classes: int, field: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise DermaganError(f"{field}: expected {n} integer labels, got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DermaganError(f"{field}: labels must be in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of uint8 images (N, H, W, 3) in [0, 1] units, without a float copy of all."""
    total, total_sq, count = np.zeros(3), np.zeros(3), 0
    for start in range(0, len(images), chunk):
        x = images[start:start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
        total += x.sum(0)
        total_sq += (x * x).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean ** 2, 0.0))
    return mean, np.maximum(std, 1e-3)  # a constant channel must not divide by zero


def dihedral_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Per image, a random horizontal flip, vertical flip and (square images) transpose: all 8 dihedral
    views, hence every 90-degree rotation. Lesions have no orientation, so the class is unchanged."""
    flips = (torch.rand(len(x), 3, generator=gen) < 0.5).to(x.device)[:, :, None, None, None]
    x = torch.where(flips[:, 0], x.flip(3), x)
    x = torch.where(flips[:, 1], x.flip(2), x)
    if x.shape[2] == x.shape[3]:
        x = torch.where(flips[:, 2], x.transpose(2, 3), x)
    return x


def _device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


@torch.no_grad()
def _apply(model: DomainEncoder, images: np.ndarray, method: str, batch_size: int,
           device: torch.device | str | None) -> np.ndarray:
    """``model.<method>`` on uint8 images (N, H, W, 3), batch by batch, in eval mode; float64 out."""
    images = check_images(images, "images")
    if model.image_size is not None and tuple(images.shape[1:3]) != model.image_size:
        raise DermaganError(f"images: the encoder was trained on {model.image_size} px images, "
                            f"got {tuple(images.shape[1:3])} (features at another scale are another space)")
    device = _device(device) if device is not None else next(model.parameters()).device
    model = model.to(device).eval()
    fn = getattr(model, method)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
        x = to_float_batch(chunk.to(device)).contiguous(memory_format=torch.channels_last)
        out.append(fn(x).double().cpu().numpy())
    width = FEATURE_DIM if method == "features" else model.num_classes
    return np.concatenate(out) if out else np.zeros((0, width))


def encode(model: DomainEncoder, images: np.ndarray, batch_size: int = 256,
           device: torch.device | str | None = None) -> np.ndarray:
    """Domain features (N, 256), float64, of uint8 images (N, H, W, 3); ``device`` defaults to the model's."""
    return _apply(model, images, "features", batch_size, device)


def predict_labels(model: DomainEncoder, images: np.ndarray, batch_size: int = 256,
                   device: torch.device | str | None = None) -> np.ndarray:
    """Arg-max class of each uint8 image (N, H, W, 3)."""
    return _apply(model, images, "forward", batch_size, device).argmax(1)


def train_domain_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int = 30,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    device: torch.device | str | None = None,
    val_images: np.ndarray | None = None,
    val_labels: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[DomainEncoder, dict]:
    """Train a ``DomainEncoder`` on uint8 images (N, H, W, 3) with integer labels; return it (eval mode) and
    its history: ``train_loss`` per epoch and, with val images, ``val_bal_acc`` per epoch.

    AdamW with a per-batch cosine decay to 0, cross-entropy with inverse-frequency class weights (rare
    classes shape the space as much as common ones), random dihedral flips/rotations. Initialisation,
    shuffling, augmentation and dropout all come from ``seed``: on CPU two runs give identical weights.
    The caller's global torch RNG state is left as it was. The last epoch's weights are returned
    (validation is only reported, never used to pick an epoch).
    """
    images = check_images(images, "images")
    labels = check_labels(labels, len(images), num_classes, "labels")
    if len(images) < 2:
        raise DermaganError(f"images: need at least 2 training images, got {len(images)}")
    if epochs < 1 or batch_size < 2 or not lr > 0:
        raise DermaganError(f"encoder: need epochs >= 1, batch_size >= 2 and lr > 0, got {epochs}, {batch_size}, {lr}")
    if (val_images is None) != (val_labels is None):
        raise DermaganError("val_images/val_labels: give both or neither")
    if val_images is not None:
        val_images = check_images(val_images, "val_images")
        val_labels = check_labels(val_labels, len(val_images), num_classes, "val_labels")
    device = _device(device)
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        model = DomainEncoder(num_classes, images.shape[1:3])
        mean, std = channel_stats(images)
        model.mean.copy_(torch.from_numpy(mean).view(1, 3, 1, 1))
        model.std.copy_(torch.from_numpy(std).view(1, 3, 1, 1))
        model = model.to(device, memory_format=torch.channels_last)
        history = _fit(model, images, labels, epochs=epochs, batch_size=batch_size, lr=lr,
                       weight_decay=weight_decay, seed=seed, device=device, val_images=val_images,
                       val_labels=val_labels, progress=progress)
    return model.eval(), history


def _fit(model: DomainEncoder, images: np.ndarray, labels: np.ndarray, *, epochs: int, batch_size: int,
         lr: float, weight_decay: float, seed: int, device: torch.device, val_images: np.ndarray | None,
         val_labels: np.ndarray | None, progress: bool) -> dict:
    """The training loop of ``train_domain_encoder`` (inside its forked RNG)."""
    gen = torch.Generator().manual_seed(seed)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2)  # uint8 NCHW view, no copy
    targets = torch.from_numpy(labels)
    steps = math.ceil(len(images) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, epochs * steps) / (epochs * steps))))
    weights = balanced_class_weights(labels, model.num_classes).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=weights)
    history: dict[str, list[float]] = {"train_loss": []}
    if val_images is not None:
        history["val_bal_acc"] = []
    bar = tqdm(range(epochs), desc="domain encoder", mininterval=2, **({} if progress else {"disable": True}))
    for _ in bar:
        model.train()
        total, seen = 0.0, 0
        for idx in torch.randperm(len(images), generator=gen).split(batch_size):
            if len(idx) < 2:  # batch norm needs two samples
                continue
            x = dihedral_augment(tensor[idx], gen)
            x = to_float_batch(x.to(device)).contiguous(memory_format=torch.channels_last)
            y = targets[idx].to(device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        if not np.isfinite(total):
            raise DermaganError(f"encoder: training diverged at epoch {len(history['train_loss']) + 1} (loss {total})")
        history["train_loss"].append(total / seen)
        postfix = {"loss": f"{total / seen:.3f}"}
        if val_images is not None:
            predicted = predict_labels(model, val_images, device=device)
            history["val_bal_acc"].append(balanced_accuracy(val_labels, predicted))
            postfix["val_bal_acc"] = f"{history['val_bal_acc'][-1]:.3f}"
        bar.set_postfix(postfix)
    return history


def save_encoder(model: DomainEncoder, path: Path | str) -> Path:
    """Write the encoder's config and weights atomically (a crash mid-write keeps the old file)."""
    path = Path(path)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_file(path) as tmp:
        torch.save({"format": _FORMAT, "space": DOMAIN_SPACE, "config": model.config, "state_dict": state}, tmp)
    return path


def load_encoder(path: Path | str, device: torch.device | str | None = None) -> DomainEncoder:
    """The encoder saved by ``save_encoder`` (loaded with ``weights_only=True``), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DermaganError(f"encoder: no saved encoder at {path}")
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(saved, dict) or saved.get("format") != _FORMAT:
        raise DermaganError(f"encoder: {path} is not a saved domain encoder ({_FORMAT})")
    cfg = saved["config"]
    model = DomainEncoder(cfg["num_classes"], cfg["image_size"], cfg["dropout"])
    model.load_state_dict(saved["state_dict"])
    return model.to(_device(device), memory_format=torch.channels_last).eval()
