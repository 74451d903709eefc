"""Prediction-time input rules and preprocessing: which files are read, how they become arrays, how
the predictions are written.

Only the standard library, numpy and Pillow are imported, so this file also works on its own (the
offline bundle ships a verbatim copy). ``resize_center_crop`` is the training resize too
(dermagan.data.images imports it from here): prediction and training see the same pixels.

The rules, in order:

* Inputs (:func:`collect_inputs`): one image file, or the direct children of a folder sorted by
  name. Only regular files (or links to them) named ``*.jpg``/``*.jpeg``/``*.png`` (any case) are
  read; every other entry is skipped and returned with the reason: another suffix, a folder (also
  one named ``x.jpg``), a FIFO, socket or device, a broken link, a link loop, a link to a device.
  Nothing but a regular file is ever opened (a FIFO would block, ``/dev/zero`` never ends).
* Ids (:func:`image_ids`): the file name without its suffix, unless two inputs share it
  (``dup.jpg`` and ``dup.png``): those keep their full names, so ids are always unique.
* Images (:func:`load_image`): refused, from the header alone (before any pixel is decoded or
  resized), when over Pillow's decompression-bomb limit, when the short side is below
  ``min_side``, when long side / short side exceeds ``max_aspect`` (a thin strip would be scaled
  up to a huge image), or when the mode is not 8-bit RGB, RGBA, L, LA or P (16-bit ``I;16``,
  ``I``, ``F``, bilevel ``1``, CMYK... are named and refused). Accepted modes become RGB, then the
  short side goes to ``size`` (bicubic) and the centre is cropped.
* Output (:func:`write_predictions_csv`): a CSV via the csv module; a text cell starting with
  ``=``, ``+``, ``-``, ``@``, tab or CR gets a leading ``'`` (OWASP's CSV-injection advice), written
  to a temporary file beside the target and renamed over it, so a failure leaves nothing behind.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import stat
import tempfile
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ACCEPTED_MODES = ("RGB", "RGBA", "L", "LA", "P")  # all 8 bits per channel; converted to RGB
# min_side: refuse an image whose shorter side is below this many px (prepare.min_image_side's default).
# max_aspect: refuse long side / short side above this. HAM10000 (600x450, 150x112) is 1.33, phone
# photos 1.33-2.2; 4 bounds the resized image at size x 4*size, whatever the source shape.
PREPROCESSING_DEFAULTS = {"min_side": 32, "max_aspect": 4.0}
MODE_NOTES = {"I": "32-bit integer", "F": "32-bit float", "1": "1-bit black and white", "CMYK": "CMYK colour"}
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class InputError(ValueError):
    """An input or output path that is refused; the message names it."""


# --- which files ---------------------------------------------------------------------------------

def collect_inputs(path: Path | str) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files to read and ``(name, reason)`` for every entry skipped.

    ``path`` is one image file, or a folder whose direct children are considered (sorted by name).
    A path that does not exist, is a broken link or a loop, is neither a file nor a folder, or is a
    file that is not a JPEG/PNG raises InputError naming it.
    """
    path = Path(path)
    kind = _entry_kind(path)
    if kind == "folder":
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(f"{path}: cannot list the folder ({exc.strerror or exc})") from exc
        files, skipped = [], []
        for entry in entries:
            child = Path(entry.path)
            reason = _skip_reason(child, _entry_kind(child))
            if reason:
                skipped.append((entry.name, reason))
            else:
                files.append(child)
        return files, skipped
    reason = _skip_reason(path, kind)
    if reason:
        raise InputError(f"{path}: {reason}; give a .jpg/.jpeg/.png file or a folder of them")
    return [path], []


def _entry_kind(path: Path) -> str:
    """"file", "folder", or what else it is (a sentence), looking only: nothing is opened."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop"
        if os.path.islink(path):
            return f"a broken symbolic link (to {os.readlink(path)!r})"
        if exc.errno == errno.ENOENT:
            return "not found"
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    what = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a character device" if stat.S_ISCHR(mode) else "a block device" if stat.S_ISBLK(mode)
            else "not a regular file")
    return f"{what}{' behind a symbolic link' if os.path.islink(path) else ''}, not a regular file"


def _skip_reason(path: Path, kind: str) -> str | None:
    if kind == "folder":
        return "a folder, not an image file"
    if kind != "file":
        return kind
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not a .jpg/.jpeg/.png file (suffix {path.suffix or 'none'!r})"
    return None


def image_ids(files: Sequence[Path | str]) -> list[str]:
    """One unique id per file: its stem (``ISIC_1.jpg`` -> ``ISIC_1``), or its full name when another
    file has the same stem or its stem is another file's full name (``dup.jpg``, ``dup.png``).

    File names in one folder differ, so the ids always do; names repeated across folders are refused.
    """
    names = [Path(f).name for f in files]
    stems = Counter(Path(n).stem for n in names)
    taken = Counter(names)
    ids = [Path(n).stem if stems[Path(n).stem] == 1 and Path(n).stem not in taken else n for n in names]
    repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if repeated:
        raise InputError(f"the inputs repeat the file name(s) {repeated}; ids must be unique")
    return ids


# --- one image -----------------------------------------------------------------------------------

def too_large_message(path: Path | str, exc: Exception) -> str:
    """Pillow's bomb message ("Image size (N pixels) exceeds limit of M pixels...") in our words."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(found.group(1)):,} pixels" if found else str(exc)
    return (f"{path}: image is too large to decode ({size}; the limit is {Image.MAX_IMAGE_PIXELS:,} "
            "pixels, Pillow's decompression-bomb guard); downscale it first")


def resize_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """Resize so the short side is ``size``, then centre-crop to ``size`` x ``size``."""
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    resized = image.resize((new_w, new_h), Image.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.uint8)


def check_header(path: Path | str, image: Image.Image, min_side: int, max_aspect: float) -> None:
    """Refuse, from an opened (not yet decoded) image, a mode, size or shape prediction cannot use."""
    width, height = image.size
    if image.mode not in ACCEPTED_MODES:
        note = ("16-bit greyscale" if image.mode.startswith("I;16") else MODE_NOTES.get(image.mode, "not 8-bit "
                "RGB/greyscale/palette"))
        raise InputError(f"{path}: image mode is {image.mode} ({note}); only 8-bit RGB, RGBA, greyscale (L, LA) "
                         "and palette (P) images are read: convert it to 8-bit RGB first")
    if min(width, height) < min_side:
        raise InputError(f"{path}: image is {width}x{height} px, its shorter side is below the minimum "
                         f"{min_side} px")
    if max(width, height) > max_aspect * min(width, height):
        raise InputError(f"{path}: image is {width}x{height} px, an aspect ratio of "
                         f"{max(width, height) / min(width, height):.1f}, above the maximum {max_aspect:g}; "
                         "crop it to the lesion first")


def load_image(path: Path | str | BinaryIO, size: int, min_side: int = PREPROCESSING_DEFAULTS["min_side"],
               max_aspect: float = PREPROCESSING_DEFAULTS["max_aspect"]) -> np.ndarray:
    """One image as a ``size`` x ``size`` x 3 uint8 array, with the training resize; InputError if refused.

    ``path`` is a file path (opened without blocking and checked to be a regular file before Pillow
    reads it) or an open binary file such as ``io.BytesIO`` (messages then say "image"). The header
    checks (:func:`check_header`; Pillow's pixel limit as an error, not a warning) run before any
    pixel is decoded.
    """
    if hasattr(path, "read"):
        return _decode(path, "image", size, min_side, max_aspect)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from exc
    with open(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise InputError(f"{path}: not a regular file")
        return _decode(fh, path, size, min_side, max_aspect)


def _decode(fh: BinaryIO, name, size: int, min_side: int, max_aspect: float) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fh) as img:
                check_header(name, img, min_side, max_aspect)
                img.load()
                image = img if img.mode == "RGB" else img.convert("RGB")
                return resize_center_crop(image, size)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(too_large_message(name, exc)) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: cannot decode image ({exc})") from exc


def load_batch(files: Sequence[Path | str], size: int, min_side: int = PREPROCESSING_DEFAULTS["min_side"],
               max_aspect: float = PREPROCESSING_DEFAULTS["max_aspect"],
               progress: Callable[[Iterable], Iterable] | None = None,
               ) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """``(images (N, size, size, 3) uint8, their ids, (name, reason) of each refused file)``.

    Ids come from :func:`image_ids` over all ``files``, so a file's id does not depend on which
    others decode. ``progress`` may wrap the loop (e.g. ``tqdm``).
    """
    ids_of = image_ids(files)
    stack = np.empty((len(files), size, size, 3), dtype=np.uint8)
    ids, skipped = [], []
    pairs = list(zip(files, ids_of))
    for path, image_id in (progress(pairs) if progress else pairs):
        try:
            stack[len(ids)] = load_image(path, size, min_side, max_aspect)
        except InputError as exc:
            skipped.append((Path(path).name, str(exc)))
            continue
        ids.append(image_id)
    return stack[:len(ids)].copy() if len(ids) < len(files) else stack, ids, skipped


# --- the CSV -------------------------------------------------------------------------------------

def csv_safe(text: str) -> str:
    """``text`` with a leading ``'`` when a spreadsheet would read it as a formula."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def write_predictions_csv(header: Sequence[str], rows: Iterable[Sequence], out_path: Path | str) -> Path:
    """Write ``header`` and ``rows`` (text cells through :func:`csv_safe`) to ``out_path``, atomically.

    The table goes to a temporary file in ``out_path``'s folder, renamed over ``out_path`` at the
    end. An ``out_path`` that is a folder (``.`` too) or any other non-regular entry, in a folder that
    is missing or not writable, raises InputError naming it; on any failure no temporary is left.
    """
    out = Path(out_path)
    parent = out.parent
    if out.name in ("", ".", "..") or os.path.isdir(out):
        raise InputError(f"{out}: is a folder; give the path of the CSV file to write (e.g. {out}/preds.csv)")
    if os.path.lexists(out) and not stat.S_ISREG(os.lstat(out).st_mode):
        raise InputError(f"{out}: exists and is not a regular file (a link, pipe or device); choose another path")
    if not os.path.isdir(parent):
        raise InputError(f"{out}: cannot be written: its folder {parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", suffix=".csv", dir=parent)
    except OSError as exc:
        raise InputError(f"{out}: cannot be written in {parent} ({exc.strerror or exc})") from exc
    try:
        with open(fd, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([csv_safe(str(h)) for h in header])
            writer.writerows([csv_safe(c) if isinstance(c, str) else c for c in row] for row in rows)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{out}: cannot be written ({exc.strerror or exc})") from exc
        raise
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
