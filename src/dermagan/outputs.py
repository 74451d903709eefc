"""Which paths a dermagan command may write: the checks behind ``atomic_dir``/``atomic_file`` and the CLI.

The rule: a command never deletes or overwrites a path it did not create as its own output.
An existing path may be replaced only when it is

* a folder that is empty or holds the marker file ``.dermagan-output`` at its top level
  (``atomic_dir`` writes it into every folder output; its content is fixed, so DVC hashes stay
  reproducible), or
* a file that is empty or that dermagan wrote: ``atomic_file`` sets the extended attribute
  ``user.dermagan.output`` on it. Git does not keep extended attributes, so a text file whose
  first line is a ``# ... written by `dermagan ...`` provenance header (the tuned-params files
  that ``dermagan tune --apply`` rewrites) also counts. On a filesystem without extended
  attributes any other non-empty file is refused.

Beyond that an output may never be a symlink, ``/``, the home folder, the current folder, a
repository root (a folder with ``.git``, ``.dvc`` or ``dvc.yaml``) or above one of them; and (in
the CLI preflight, :func:`check_command_paths`) never an input, inside one or above one, nor the
same path as another output of the command or inside/above it. Every check only looks: nothing is
created, so a refused command leaves no trace.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from dermagan.errors import DermaganError

MARKER = ".dermagan-output"
MARKER_TEXT = json.dumps({"dermagan_output": 1, "note": "written by dermagan; a later dermagan run may "
                                                        "replace this whole folder"}) + "\n"
XATTR = "user.dermagan.output"
XATTR_VALUE = b"1"
HEADER_SIGN = b"written by `dermagan "
REPO_MARKERS = (".git", ".dvc", "dvc.yaml")
DIR, FILE = "dir", "file"
AGAIN = "remove it yourself or choose another path"


def real(path: Path | str) -> Path:
    """``path`` made absolute with every symlink resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.abspath(path)))


def _name(path: Path | str, label: str | None) -> str:
    return f"{label} {path}" if label else str(path)


# --- own outputs ---------------------------------------------------------------------------------

def write_marker(folder: Path) -> None:
    """Mark ``folder`` as a dermagan output (a fixed text: no timestamp, DVC hashes the folder)."""
    (Path(folder) / MARKER).write_text(MARKER_TEXT)


def is_own_dir(folder: Path) -> bool:
    return (Path(folder) / MARKER).is_file()


def mark_file(path: Path) -> bool:
    """Tag the file as dermagan's (extended attribute); False where the filesystem cannot."""
    try:
        os.setxattr(path, XATTR, XATTR_VALUE, follow_symlinks=False)
    except (OSError, AttributeError):  # no xattr support (tmpfs on old kernels, some network mounts, macOS)
        return False
    return True


def file_mark(path: Path) -> bool | None:
    """True: dermagan wrote the file; False: it did not; None: unknown (the filesystem keeps no xattrs)."""
    try:
        value = os.getxattr(path, XATTR, follow_symlinks=False)
    except (AttributeError, OSError) as exc:  # AttributeError: no xattr API on this platform
        if isinstance(exc, AttributeError) or exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return True if _has_header(path) else None
        return _has_header(path)  # ENODATA: not tagged (any other error: cannot tell, so not ours)
    return value == XATTR_VALUE or _has_header(path)


def _has_header(path: Path) -> bool:
    """A first line ``# ... written by `dermagan ...`` (files that travel through git, which drops xattrs)."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(300).split(b"\n", 1)[0]
    except OSError:
        return False
    return first.startswith(b"# ") and HEADER_SIGN in first


# --- the checks ----------------------------------------------------------------------------------

def _protected() -> list[tuple[Path, str]]:
    """Folders no output may be or contain: /, the home folder, the current folder, repository roots."""
    found = [(Path("/"), "the root folder /")]
    home = os.path.expanduser("~")
    if home and home != "~":
        found.append((real(home), f"the home folder {home}"))
    try:
        cwd = real(os.getcwd())
    except OSError:
        return found
    found.append((cwd, f"the current folder {cwd}"))
    for folder in (cwd, *cwd.parents):
        if any(os.path.lexists(folder / m) for m in REPO_MARKERS):
            found.append((folder, f"the repository root {folder}"))
    return found


def check_identity(path: Path | str, label: str | None = None) -> None:
    """Refuse a symlink, or a path that is or contains /, home, the current folder or a repository root."""
    raw, name = Path(os.path.abspath(path)), _name(path, label)
    if os.path.islink(raw):
        raise DermaganError(f"{name}: is a symbolic link (to {os.readlink(raw)}); dermagan writes an output only "
                            f"at a real path it owns, never through a link: {AGAIN}")
    resolved = real(raw)
    for folder, what in _protected():
        if resolved == folder:
            raise DermaganError(f"{name}: is {what}; an output folder is replaced whole, so it may not be this "
                                "folder: choose a folder of its own (e.g. artifacts/NAME)")
        if resolved in folder.parents:
            raise DermaganError(f"{name}: contains {what}; an output folder is replaced whole, so it may not "
                                "contain this folder: choose a folder of its own (e.g. artifacts/NAME)")
    if resolved.is_dir() and any(os.path.lexists(resolved / m) for m in REPO_MARKERS):
        raise DermaganError(f"{name}: is a repository root (it holds .git, .dvc or dvc.yaml); "
                            "choose a folder of its own (e.g. artifacts/NAME)")


def check_destination(path: Path | str, kind: str, label: str | None = None) -> None:
    """Refuse a destination whose folder cannot be made or written, and an existing path dermagan
    may not replace (a file where a folder goes or back, a foreign folder or file)."""
    raw, name = Path(os.path.abspath(path)), _name(path, label)
    what = "folder" if kind == DIR else "file"
    ancestor = raw.parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        kind_of = "a file" if os.path.isfile(ancestor) else "not a folder"
        raise DermaganError(f"{name}: cannot be created: {ancestor} is {kind_of}, not a folder; choose another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise DermaganError(f"{name}: cannot be written: the folder {ancestor} is read-only for this user; "
                            "choose another path or fix the permissions")
    if not os.path.lexists(raw):
        return
    if kind == DIR:
        if not raw.is_dir():
            raise DermaganError(f"{name}: is an existing file, but this output is a folder; {AGAIN}")
        try:
            entries = os.listdir(raw)
        except OSError as exc:
            raise DermaganError(f"{name}: cannot be read ({exc.strerror}); {AGAIN}") from exc
        if entries and not is_own_dir(raw):
            raise DermaganError(f"{name}: is a folder dermagan did not write (it is not empty and has no {MARKER} "
                                f"marker); dermagan replaces only its own outputs: {AGAIN}")
        if entries and not os.access(raw, os.W_OK | os.X_OK):
            raise DermaganError(f"{name}: is read-only for this user, so it cannot be replaced; "
                                "choose another path or fix the permissions")
        return
    if raw.is_dir():
        raise DermaganError(f"{name}: is an existing folder, but this output is a {what}; {AGAIN}")
    if not raw.is_file():
        raise DermaganError(f"{name}: exists and is not a regular file; {AGAIN}")
    if raw.stat().st_size == 0:
        return
    mark = file_mark(raw)
    if mark is None:
        raise DermaganError(f"{name}: is an existing file, and this filesystem keeps no extended attributes, so "
                            f"dermagan cannot tell whether it wrote it; it replaces only its own outputs: {AGAIN}")
    if not mark:
        raise DermaganError(f"{name}: is a file dermagan did not write; dermagan replaces only its own outputs: "
                            f"{AGAIN}")


def check_output(path: Path | str, kind: str, label: str | None = None) -> None:
    """Every check of one output path (``kind``: ``"dir"`` or ``"file"``); it only looks."""
    check_identity(path, label)
    check_destination(path, kind, label)


def overlap(a: Path, b: Path) -> str | None:
    """How resolved path ``a`` relates to ``b``: "is", "lies inside", "contains" or None."""
    if a == b:
        return "is"
    if b in a.parents:
        return "lies inside"
    if a in b.parents:
        return "contains"
    return None


def preflight(inputs: Iterable[tuple[str, Path]], outputs: Iterable[tuple[str, Path, str]],
              command: str | None = None) -> None:
    """Refuse a command's outputs before anything is touched.

    ``inputs``: (label, path) or (label, path, role) of what the command reads or works in (role:
    "input" unless given); ``outputs``: (label, path, kind). Order: symlink and protected folders;
    an output that is, lies inside or contains an input; two outputs that are one path or nested;
    then each destination (parent folder, existing path).
    """
    ins = [(entry[0], entry[1], real(entry[1]), entry[2] if len(entry) > 2 else "input")
           for entry in inputs if entry[1] is not None]
    outs = [(label, path, kind) for label, path, kind in outputs if path is not None]
    for label, path, _ in outs:
        check_identity(path, label)
    for label, path, _ in outs:
        resolved = real(path)
        for in_label, in_path, in_real, role in ins:
            how = overlap(resolved, in_real)
            if how:
                the = f"the {role} {in_label}" + ("" if how == "is" else f" {in_path}")
                raise DermaganError(f"{label} {path}: {how} {the}; an output may not be an input, lie inside one "
                                    "or contain one (it would be replaced or read back): choose another path")
    for i, (label, path, _) in enumerate(outs):
        for other_label, other_path, _ in outs[i + 1:]:
            how = overlap(real(other_path), real(path))
            if how:
                raise DermaganError(f"{other_label} {other_path}: {how} the output {label} {path}; two outputs "
                                    f"of one command{f' ({command})' if command else ''} must be separate paths, "
                                    "neither inside the other")
    for label, path, kind in outs:
        check_destination(path, kind, label)


Entry = str | tuple  # "attr", or (attr, label), or (attr, label, when(args) -> bool)


def _entries(args, entries: Iterable[Entry]) -> list[tuple[str, Path]]:
    found = []
    for entry in entries:
        attr, label, when = (entry, None, None) if isinstance(entry, str) else (tuple(entry) + (None, None))[:3]
        if when is not None and not when(args):
            continue
        value = getattr(args, attr, None)
        if value is not None:
            found.append((label or "--" + attr.replace("_", "-"), Path(value)))
    return found


def check_command_paths(args, table: Mapping[str, Mapping[str, Iterable[Entry]]]) -> None:
    """The CLI preflight: look up ``args.command`` in ``table`` (keys ``inputs``, ``work``, ``dirs``,
    ``files``) and run :func:`preflight`; ``--params`` always counts as an input."""
    spec = table.get(getattr(args, "command", None))
    if not spec:
        return
    inputs = _entries(args, ["params", *spec.get("inputs", ())])
    inputs += [(label, path, "working folder") for label, path in _entries(args, spec.get("work", ()))]
    outputs = [(label, path, DIR) for label, path in _entries(args, spec.get("dirs", ()))]
    outputs += [(label, path, FILE) for label, path in _entries(args, spec.get("files", ()))]
    preflight(inputs, outputs, args.command)

