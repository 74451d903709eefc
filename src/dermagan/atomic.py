"""Write stage outputs so that a failure leaves nothing half-written behind, and never replace
a path dermagan did not write (see dermagan.outputs for the rule and its checks)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from dermagan.errors import DermaganError
from dermagan.outputs import DIR, FILE, check_output, is_own_dir, mark_file, overlap, real, write_marker

_open = threading.local()  # outputs being written by the atomic_dir/atomic_file blocks now open


@contextlib.contextmanager
def atomic_dir(final: Path, label: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it replaces ``final``.

    ``final`` may exist only as an empty folder or an earlier dermagan output folder (marker
    ``.dermagan-output``, written into the new folder too); anything else is refused before the
    temporary folder is made. On any exception, including a failing rename, the temporary folder
    is removed and ``final`` is left as it was. Blocks may be nested, for separate paths.
    """
    final = Path(final)
    with _claim(final, label):
        check_output(final, DIR, label)
        tmp = Path(_make(final, lambda: tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent)))
        try:
            tmp.chmod(0o777 & ~_umask())
            write_marker(tmp)
            yield tmp
            if not is_own_dir(tmp):  # the block removed the marker
                write_marker(tmp)
            check_output(final, DIR, label)  # again: something may have appeared there meanwhile
            _move_dir(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


@contextlib.contextmanager
def atomic_file(final: Path, label: str | None = None) -> Iterator[Path]:
    """Yield a temporary file path beside ``final``; on success it is renamed to ``final``.

    ``final`` may exist only as an empty file or one dermagan wrote (extended attribute
    ``user.dermagan.output``, set on the new file before the rename); anything else is refused
    before the temporary file is made. On any exception the temporary file is removed and
    ``final`` is left as it was. Blocks may be nested, for separate paths.
    """
    final = Path(final)
    with _claim(final, label):
        check_output(final, FILE, label)
        fd, name = _make(final, lambda: tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        os.close(fd)
        tmp = Path(name)
        try:
            tmp.chmod(0o666 & ~_umask())
            yield tmp
            mark_file(tmp)
            check_output(final, FILE, label)
            try:
                os.replace(tmp, final)
            except OSError as exc:
                raise DermaganError(f"{final}: cannot move the new file into place ({exc.strerror or exc}); "
                                    "the previous one, if any, is kept") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _make(final: Path, make):
    """Create ``final``'s folder, then the temporary entry beside it; an OSError becomes a clear error."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        return make()
    except OSError as exc:
        raise DermaganError(f"{final}: cannot write beside it in {final.parent} ({exc.strerror or exc})") from exc


def _move_dir(tmp: Path, final: Path) -> None:
    """Put ``tmp`` at ``final``; an existing (own or empty) ``final`` is set aside first and put
    back if the rename fails, then removed."""
    try:
        if not os.path.lexists(final):
            os.replace(tmp, final)
            return
        aside = final.parent / f".{final.name}.tmp-old-{secrets.token_hex(4)}"
        os.rename(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.rename(aside, final)
            raise
    except OSError as exc:
        raise DermaganError(f"{final}: cannot move the new folder into place ({exc.strerror or exc}); "
                            "the previous one, if any, is kept") from exc
    shutil.rmtree(aside, ignore_errors=True)


@contextlib.contextmanager
def _claim(final: Path, label: str | None) -> Iterator[None]:
    """Register ``final`` while its block is open; refuse one that is, lies inside or contains another."""
    opened = _open.__dict__.setdefault("paths", [])
    resolved = real(final)
    for other, other_name in opened:
        how = overlap(resolved, other)
        if how:
            raise DermaganError(f"{label + ' ' if label else ''}{final}: {how} {other_name}, another output being "
                                "written by this command; outputs must be separate paths, neither inside the other")
    entry = (resolved, f"{label} {final}" if label else str(final))
    opened.append(entry)
    try:
        yield
    finally:
        opened.remove(entry)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
