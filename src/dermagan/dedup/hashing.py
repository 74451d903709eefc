"""Batched perceptual hashes that equal imagehash 4.3.2 bit for bit, stored as packed bits.

Each hash is imagehash's boolean ``hash_size x hash_size`` array flattened row-major and packed
with ``np.packbits`` (first bit = most significant bit of byte 0), so one image is one row of
``ceil(hash_size**2 / 8)`` uint8 bytes. For hash sizes whose bit count is a multiple of 8 (8, 16)
the bytes' hex equals ``str(imagehash_hash)``.

Greyscale conversion and the LANCZOS resize are done by PIL per image, exactly as imagehash does;
the transforms (DCT, wavelets) and the median comparison run on whole batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pywt
import scipy.fftpack
from PIL import Image

from dermagan.errors import DermaganError

HASH_KINDS = ("phash", "whash")
BATCH = 1024  # images transformed together; bounds the float64 working memory


def _as_pil(image) -> Image.Image:
    """A PIL image from a PIL image or a uint8 array (H, W) / (H, W, 3|4)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise DermaganError(f"images must be uint8 (H, W[, C]) arrays, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def grey_resized(images: Iterable, size: int) -> np.ndarray:
    """(N, size, size) uint8: each image ``.convert('L').resize((size, size), LANCZOS)`` like imagehash."""
    out = [np.asarray(_as_pil(im).convert("L").resize((size, size), Image.Resampling.LANCZOS))
           for im in images]
    if not out:
        return np.zeros((0, size, size), dtype=np.uint8)
    return np.stack(out)


def _batches(images: Sequence | np.ndarray) -> Iterable:
    """Consecutive slices of at most BATCH images."""
    for start in range(0, len(images), BATCH):
        yield images[start:start + BATCH]


def n_hash_bytes(hash_size: int) -> int:
    """Bytes per packed hash of ``hash_size x hash_size`` bits."""
    return (hash_size * hash_size + 7) // 8


def _median_bits(low: np.ndarray) -> np.ndarray:
    """Packed ``low > median(low)`` per image for a (N, h, h) float stack (imagehash's rule)."""
    flat = low.reshape(len(low), -1)
    med = np.median(flat, axis=1)
    return np.packbits(flat > med[:, None], axis=1)


def _is_power_of_two(value: int) -> bool:
    """True for 1, 2, 4, 8, ..."""
    return value > 0 and value & (value - 1) == 0


def _phash_chunk(images, hash_size: int, highfreq_factor: int) -> np.ndarray:
    """Packed phash bits for one batch of images."""
    pixels = grey_resized(images, hash_size * highfreq_factor)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)
    return _median_bits(dct[:, :hash_size, :hash_size])


def phash_batch(images, hash_size: int = 8, highfreq_factor: int = 4) -> np.ndarray:
    """Perceptual (DCT) hash of every image: equals ``imagehash.phash(img, hash_size, highfreq_factor)``.

    ``images``: a uint8 stack (N, H, W, 3) or (N, H, W), or a sequence of PIL images / uint8 arrays.
    Returns packed bits, uint8 (N, ceil(hash_size**2 / 8)).
    """
    if hash_size < 2:
        raise DermaganError("hash_size must be >= 2")
    parts = [_phash_chunk(chunk, hash_size, highfreq_factor) for chunk in _batches(images)]
    if not parts:
        return np.zeros((0, n_hash_bytes(hash_size)), dtype=np.uint8)
    return np.concatenate(parts)


def _whash_chunk(images, hash_size: int, image_scale: int, mode: str) -> np.ndarray:
    """Packed whash bits for one batch of images (remove_max_haar_ll=True, as imagehash's default)."""
    axes = (-2, -1)
    ll_max_level = int(np.log2(image_scale))
    dwt_level = ll_max_level - int(np.log2(hash_size))
    pixels = grey_resized(images, image_scale) / 255.0
    coeffs = list(pywt.wavedec2(pixels, "haar", level=ll_max_level, axes=axes))
    coeffs[0] *= 0
    pixels = pywt.waverec2(coeffs, "haar", axes=axes)
    low = pywt.wavedec2(pixels, mode, level=dwt_level, axes=axes)[0]
    return _median_bits(low)


def whash_batch(images, hash_size: int = 8, image_scale: int = 64, mode: str = "haar") -> np.ndarray:
    """Wavelet hash of every image: equals ``imagehash.whash(img, hash_size, image_scale, mode)``.

    ``image_scale`` is fixed (not imagehash's per-image default) so images of different sizes
    (150x112 real, 64x64 synthetic) are hashed at the same scale and stay comparable.
    Returns packed bits, uint8 (N, ceil(hash_size**2 / 8)).
    """
    if not (_is_power_of_two(hash_size) and _is_power_of_two(image_scale)):
        raise DermaganError(f"hash_size ({hash_size}) and image_scale ({image_scale}) must be powers of 2")
    if hash_size > image_scale:
        raise DermaganError(f"hash_size ({hash_size}) must be <= image_scale ({image_scale})")
    parts = [_whash_chunk(chunk, hash_size, image_scale, mode) for chunk in _batches(images)]
    if not parts:
        return np.zeros((0, n_hash_bytes(hash_size)), dtype=np.uint8)
    return np.concatenate(parts)


def hash_images(images, kind: str, hash_size: int = 8, **options) -> np.ndarray:
    """Packed hashes of ``kind`` ("phash" or "whash"); ``options`` go to that hash function."""
    if kind == "phash":
        return phash_batch(images, hash_size, **options)
    if kind == "whash":
        return whash_batch(images, hash_size, **options)
    raise DermaganError(f"unknown hash kind {kind!r}; expected one of {HASH_KINDS}")


def hashes_of(images, hash_size: int, whash_image_scale: int) -> dict[str, np.ndarray]:
    """Every hash kind at one fixed scale (params ``dedup``), so real and synthetic images are comparable."""
    options = {"phash": {}, "whash": {"image_scale": int(whash_image_scale)}}
    return {k: hash_images(images, k, int(hash_size), **options[k]) for k in HASH_KINDS}


def unpack_bits(packed: np.ndarray, hash_size: int = 8) -> np.ndarray:
    """Boolean (N, hash_size, hash_size) arrays, the layout of imagehash's ``ImageHash.hash``."""
    packed = np.atleast_2d(packed)
    n_bits = hash_size * hash_size
    bits = np.unpackbits(packed, axis=1, count=n_bits).astype(bool)
    return bits.reshape(len(packed), hash_size, hash_size)


def to_imagehash_hex(packed_row: np.ndarray, hash_size: int = 8) -> str:
    """The hex string ``str(imagehash_hash)`` gives for one packed hash (works for any hash_size)."""
    bits = unpack_bits(packed_row, hash_size)[0].ravel()
    width = (bits.size + 3) // 4
    return format(int("".join("1" if b else "0" for b in bits), 2), f"0>{width}x")
