"""Crash-safe file output and contained path reads: the one place that writes atomically.

* ``atomic_write(path, data)`` / ``atomic_write_json(path, obj)``: the new content goes to a
  temporary sibling ``.NAME.tmp-PID-HEX`` that ``os.replace`` renames over ``path``; a reader (or
  a crash) sees the old file or the new one, never a half-written one.
* ``atomic_dir(path)``: a context manager yielding a fresh temporary sibling directory to fill;
  on success it is swapped in (an existing ``path`` is moved aside to ``.NAME.old-PID-HEX``, the
  new one renamed into place, the old one deleted last); on any error the temporary is deleted
  and ``path`` is left as it was.
* ``sweep_stale(parent)``: deletes the ``.tmp-`` / ``.old-`` siblings a killed process left
  behind (only names of this module's pattern whose process is gone); an ``.old-`` copy whose
  target is missing (killed between the two renames) is put back instead.
* ``check_replaceable(path, marker, flag)``: ``--overwrite`` may replace only a missing or empty
  path or a directory holding ``marker`` (the file the tool writes into its outputs).
* ``resolve_inside(root, relpath, what)``: the real path of ``root/relpath``, or ValueError when
  it is absolute or leaves ``root`` (``..``, symlinks).

Files and directories are created with the user's umask (``0o666`` / ``0o777`` masked), not the
``0o600`` / ``0o700`` of ``tempfile``. Imports nothing else of the package.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from typing import Any, Iterator

_STALE_RE = re.compile(r"^\.(?P<base>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


def _sibling(path: str, kind: str) -> str:
    parent, base = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{base}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes ``data`` (text as UTF-8) to ``path`` through a temporary sibling + rename."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _sibling(path, "tmp")
    raw = data.encode() if isinstance(data, str) else data
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> None:
    """``atomic_write(path, json.dumps(obj, indent=indent) + "\\n")``."""
    atomic_write(path, json.dumps(obj, indent=indent) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[str]:
    """Yields an empty temporary sibling directory of ``path``; swaps it in on success."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = _sibling(path, "tmp")
    os.mkdir(tmp)  # mode 0o777 & ~umask
    try:
        yield tmp
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(new: str, path: str) -> None:
    """Renames directory ``new`` to ``path``; an existing ``path`` is moved aside first, put
    back if the second rename fails, and deleted only once ``new`` is in place."""
    if not os.path.lexists(path):
        os.replace(new, path)
        return
    old = _sibling(path, "old")
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    if os.path.isdir(old) and not os.path.islink(old):
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.unlink(old)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(parent: str | os.PathLike, base: str | None = None) -> list[str]:
    """Removes this module's leftovers in ``parent`` (of ``base`` only, when given) whose process
    is gone; restores an ``.old-`` copy whose target no longer exists. Returns what it removed."""
    parent = os.fspath(parent)
    if not os.path.isdir(parent):
        return []
    removed = []
    for name in sorted(os.listdir(parent)):
        m = _STALE_RE.match(name)
        if m is None or (base is not None and m["base"] != base) or _alive(int(m["pid"])):
            continue
        full, target = os.path.join(parent, name), os.path.join(parent, m["base"])
        if m["kind"] == "old" and not os.path.lexists(target):
            os.replace(full, target)  # killed between the two renames of swap_in
            continue
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)
        removed.append(full)
    return removed


def check_replaceable(path: str | os.PathLike, marker: str, flag: str = "--out") -> None:
    """ValueError unless ``path`` is missing, an empty directory, or a directory holding
    ``marker`` (i.e. written by the tool that writes that file)."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.lexists(path):
        return
    if os.path.islink(path) or not os.path.isdir(path):
        raise ValueError(f"{flag}={path}: not a directory; --overwrite replaces only a directory "
                         f"this tool wrote (one holding {marker})")
    if os.listdir(path) and not os.path.isfile(os.path.join(path, marker)):
        raise ValueError(f"{flag}={path}: has no {marker}, so this tool did not write it; "
                         "--overwrite replaces only such a directory (choose another path)")


def check_resumable(path: str | os.PathLike, marker: str, options: Any,
                    flag: str = "--out",
                    remedy: str = "rerun with the same flags to resume, or pass --overwrite"
                    ) -> None:
    """ValueError unless ``path`` is missing or empty, or holds ``marker`` (a JSON file) equal to
    ``options`` (a rerun resumes only the same build; the error names the fields that differ and
    ends with ``remedy``)."""
    path = os.path.abspath(os.fspath(path))
    file = os.path.join(path, marker)
    if os.path.exists(file):
        with open(file) as f:
            previous = json.load(f)
        if previous != options:
            changed = sorted(k for k in set(previous) | set(options)
                             if previous.get(k) != options.get(k))
            raise ValueError(f"{flag} {path} holds a build with other options ({changed}); "
                             f"{remedy}")
    elif os.path.lexists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{flag} {path} exists, is not empty and holds no {marker} (not a "
                         "build of this tool); choose an empty or new directory")


def resolve_inside(root: str | os.PathLike, relpath: Any, what: str) -> str:
    """Real path of ``root/relpath``; ValueError naming ``what`` when ``relpath`` is not a
    relative path string or resolves (``..``, symlinks) outside ``root``."""
    if not isinstance(relpath, (str, os.PathLike)):
        raise ValueError(f"{what}: path must be a string, got {type(relpath).__name__}")
    rel = os.fspath(relpath)
    if not rel or os.path.isabs(rel) or "\x00" in rel:
        raise ValueError(f"{what}: path {rel!r} must be relative to {os.fspath(root)}")
    real_root = os.path.realpath(root)
    full = os.path.realpath(os.path.join(real_root, rel))
    if os.path.commonpath([real_root, full]) != real_root:
        raise ValueError(f"{what}: path {rel!r} resolves outside {os.fspath(root)}")
    return full
