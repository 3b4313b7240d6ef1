"""Writing outputs so that a crash or Ctrl-C never leaves a half-written result in place."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(target: Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix or ".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; it replaces ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: Path, text: str) -> None:
    """Write a text file atomically, in UTF-8. A file name that is not UTF-8 (from a Windows zip,
    say) shows as Python escapes it (``caf\\udce9.jpg``) rather than failing the write."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="backslashreplace")


def write_json(target: Path, data: Any) -> None:
    """Write pretty, key-sorted JSON atomically (stable bytes for DVC and git)."""
    write_text(target, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def md5_file(path: Path, chunk: int = 1 << 22) -> str:
    """MD5 of one file's bytes, read in chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def md5_tree(path: Path) -> str:
    """MD5 of a file, or of a folder as the sorted list of its files' names and MD5s."""
    path = Path(path)
    if path.is_file():
        return md5_file(path)
    lines = [f"{p.relative_to(path).as_posix()}:{md5_file(p)}\n" for p in sorted(path.rglob("*")) if p.is_file()]
    return hashlib.md5("".join(lines).encode("utf-8")).hexdigest()


def pwrite_all(fd: int, data, position: int) -> None:
    """Write all of ``data`` (a buffer) at byte ``position`` of the open file ``fd``.

    One system call per chunk instead of page faults on a memory map: workers filling their own
    byte ranges of one output file need no lock and no shared mapping.
    """
    view = memoryview(data).cast("B")
    while view:  # pwrite may write less than asked
        written = os.pwrite(fd, view, position)
        position += written
        view = view[written:]
