"""Decode, check and resize lesion images."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# The resize lives in classify/preprocess.py (stand-alone, copied into the offline bundle): one copy
# for prepare, training and predict, so they see the same pixels.
from dermagan.classify.preprocess import IMAGE_SUFFIXES, resize_center_crop, too_large_message
from dermagan.errors import DermaganError


def is_plain_name(image_id: str) -> bool:
    """True for a bare file name: no path separator, not ``.``/``..``, no NUL (nothing outside images/)."""
    text = str(image_id)
    return bool(text) and text not in (".", "..") and not any(c in text for c in ("/", "\\", os.sep, "\0"))


def check_images_dir(images_dir: Path) -> Path:
    """Refuse an images folder that is missing, not a folder, or a symlink loop (e.g. ``images -> images``)."""
    images_dir = Path(images_dir)
    try:
        os.stat(images_dir)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DermaganError(f"{images_dir}: the images folder is a symlink loop (it points, directly or "
                                f"through other links, back to itself: {os.readlink(images_dir)!r}); make it "
                                "a folder or a link to the real images folder") from exc
        if images_dir.is_symlink():
            raise DermaganError(f"{images_dir}: the images folder is a broken symlink (to "
                                f"{os.readlink(images_dir)!r}): {exc.strerror}") from exc
        raise DermaganError(f"{images_dir}: images folder not found ({exc.strerror}); a HAM10000-layout "
                            "folder holds metadata.csv and images/") from exc
    if not images_dir.is_dir():
        raise DermaganError(f"{images_dir}: expected the images folder, found a file")
    return images_dir


def find_image(images_dir: Path, image_id: str) -> Path:
    """Return the image file for ``image_id`` (any of the accepted suffixes).

    ``image_id`` must be a bare file name, so nothing outside ``images_dir`` is ever read.
    """
    if not is_plain_name(image_id):
        raise DermaganError(f"{images_dir}: image_id {str(image_id)!r} is not a plain file name (it must not "
                            "contain '/' or '\\', be '.' or '..', or hold NUL)")
    for suffix in IMAGE_SUFFIXES:
        for candidate in (images_dir / f"{image_id}{suffix}", images_dir / f"{image_id}{suffix.upper()}"):
            if candidate.is_file():
                return candidate
    raise DermaganError(f"{images_dir}/{image_id}.jpg: image listed in metadata is missing")


def open_rgb(path: Path, strict: bool = True) -> Image.Image:
    """Fully decode an image. With ``strict``, anything but 8-bit RGB is an error.

    Without ``strict`` (prediction on user folders) greyscale/RGBA are converted to RGB.
    Corrupt and truncated files always raise DermaganError naming the file, and so do
    images over Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``; above it
    Pillow only warns, which is turned into a refusal here rather than a slow decode).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                mode = img.mode
                image = img.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DermaganError(too_large_message(path, exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DermaganError(f"{path}: cannot decode image ({exc})") from exc
    if mode != "RGB":
        if strict:
            raise DermaganError(f"{path}: image mode is {mode}, expected RGB (3-channel colour)")
        image = image.convert("RGB")
    return image


def load_image_array(path: Path, size: int, strict: bool = True) -> np.ndarray:
    """Decode one file into a ``size`` x ``size`` x 3 uint8 array."""
    return resize_center_crop(open_rgb(path, strict=strict), size)
