"""From a folder of class folders to split, augmented uint8 arrays.

Pure logic: it reads images and returns arrays; writing them is :func:`write_prepared`'s job and
the stage decides where. The split happens per original image *before* augmentation, so copies
of one photo never sit on both sides of it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from imgclf import paths
from imgclf.errors import PipelineError
from imgclf.fileio import atomic_dir, md5_file
from imgclf.images import BadImage, is_image_name, load_image

log = logging.getLogger(__name__)


@dataclass
class Source:
    """The image files found under ``data.source``, with their class indices."""

    root: Path
    labels: list[str]
    files: list[Path]
    y: list[int]
    ignored: list[Path] = field(default_factory=list)


@dataclass
class Decoded:
    """Decoded originals, in a memory-mapped scratch file, plus what had to be skipped.

    ``x`` has a row per scanned file; ``rows`` lists the rows that hold a usable image, and
    ``y`` follows ``rows``. Position ``i`` (as in :func:`split_indices`) is
    ``x[rows[i]]``.
    """

    x: np.ndarray
    rows: np.ndarray
    y: np.ndarray
    skipped: list[tuple[Path, str]]
    path: Path

    def originals(self, positions: np.ndarray) -> np.ndarray:
        return self.x[self.rows[positions]]


def _walk_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Visible image files under ``folder`` (nested folders included), in a stable order.

    Hidden files and folders are left out; symlinked files are read, symlinked folders are not
    followed (no loops). Returns (images, other files that were ignored).
    """
    images: list[Path] = []
    ignored: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith("."):
                continue
            (images if is_image_name(p) else ignored).append(p)
    images.sort(key=lambda p: p.relative_to(folder).as_posix())
    return images, ignored


def scan(source: Path, labels: list[str] | None = None) -> Source:
    """List the class folders of ``source`` and their image files.

    Class = folder name; ``labels`` (when given) fixes their order and must match the folders.
    """
    if not source.is_dir():
        raise PipelineError(f"data.source '{source}' is not a folder: create it with one subfolder "
                            "of images per class, or set data.source in params.yaml")
    folders = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
    stray = sorted(p.name for p in source.iterdir() if p.is_file() and not p.name.startswith("."))
    if stray:
        log.warning("ignoring %d file(s) at the top of %s (images belong in class folders): %s",
                    len(stray), source, ", ".join(stray[:5]))
    if not folders:
        raise PipelineError(f"data.source '{source}' has no class folders: put each class's images "
                            "in a subfolder named after the class")
    if labels is None:
        labels = folders
    else:
        missing = [lb for lb in labels if lb not in folders]
        if missing:
            raise PipelineError(f"data.labels names {missing}, but {source} has no such folder; "
                                f"folders found: {folders}")
        extra = [f for f in folders if f not in labels]
        if extra:
            raise PipelineError(f"{source} has class folders {extra} that data.labels does not list: "
                                "add them to data.labels or move them out")
    files: list[Path] = []
    y: list[int] = []
    ignored: list[Path] = []
    for index, label in enumerate(labels):
        images, other = _walk_images(source / label)
        files += images
        y += [index] * len(images)
        ignored += other
    if ignored:
        log.warning("ignoring %d file(s) whose suffix is not an image format's, e.g. %s",
                    len(ignored), ignored[0])
    return Source(root=source, labels=list(labels), files=files, y=y, ignored=ignored)


CHUNK = 32  # images per task handed to a worker process


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity, e.g. in containers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Callable]:
    """An order-preserving ``map`` over ``workers`` processes (the builtin ``map`` for 1).

    One pool serves both decoding and augmenting, so its start-up is paid once. Task ``i`` of
    a map goes to worker ``i % workers``, and each worker gets its whole share at once through a
    pipe of its own: no queue shared between processes, so a worker that dies (SIGTERM, out of
    memory) makes the map raise instead of hanging (``multiprocessing.Pool`` deadlocked when a
    killed worker held its queue's lock), and workers never wait for this process to hand them
    work (``ProcessPoolExecutor`` feeds them from a thread that needs the GIL, which MLflow's
    and scikit-learn's imports hold here). An exception in a task is raised here.

    Workers are forked while this process has a single thread (no import to redo: about 0.15 s
    of CPU each) and spawned otherwise, since a fork copies locks that other threads (MLflow's,
    an import under way) may hold.
    """
    if workers <= 1:
        yield map
        return
    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    procs: list[tuple[Any, Any, Any]] = []
    broken: list[str] = []

    def imap(fn: Callable, tasks) -> Iterator:
        if broken:
            raise RuntimeError(broken[0])
        tasks = list(tasks)
        for k, (_, send, _) in enumerate(procs):
            send.send((fn, tasks[k::len(procs)]))
        received = 0
        try:
            for i in range(len(tasks)):
                proc, _, receive = procs[i % len(procs)]
                try:
                    ok, value = receive.recv()
                except EOFError:
                    raise RuntimeError(f"worker process {proc.pid} died (exit code {proc.exitcode}); see "
                                       "the messages above, e.g. the system running out of memory") from None
                received += 1
                if not ok:
                    raise value
                yield value
        finally:
            if received < len(tasks):  # results still on their way: the pool cannot be reused
                broken.append("worker pool abandoned after a failed or unfinished map")
                _kill(procs)

    try:
        for _ in range(workers):
            task_out, task_in = context.Pipe(duplex=False)
            result_out, result_in = context.Pipe(duplex=False)
            proc = context.Process(target=_serve, args=(task_out, result_in), daemon=True)
            proc.start()
            task_out.close()
            result_in.close()
            procs.append((proc, task_in, result_out))
        yield imap
    except BaseException:
        _kill(procs)
        raise
    finally:
        for proc, send, receive in procs:
            with contextlib.suppress(OSError):
                send.send(None)
            send.close()
        for proc, send, receive in procs:
            proc.join()
            receive.close()


def _kill(procs: list) -> None:
    for proc, _, _ in procs:
        if proc.is_alive():
            proc.kill()


def _serve(tasks_in, results_out) -> None:
    """A worker's loop: run each share of tasks it is sent, sending back (ok, result) pairs."""
    _worker_signals()
    while True:
        try:
            job = tasks_in.recv()
        except EOFError:
            return
        if job is None:
            return
        fn, tasks = job
        for task in tasks:
            try:
                reply = (True, fn(task))
            except Exception as err:  # raised in the parent, as the pool's user expects
                reply = (False, err)
            results_out.send(reply)


def _worker_signals() -> None:
    """In a worker: SIGTERM ends it at once, and Ctrl-C is left to the parent, which stops the
    pool (a forked worker would otherwise inherit the stage's handlers)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(task: tuple[str, int, list[Path], int]) -> list[str | None]:
    """Worker: decode files into rows ``start...`` of the scratch array; one error text per file."""
    scratch, start, files, size = task
    x = np.load(scratch, mmap_mode="r+")
    errors: list[str | None] = []
    for offset, path in enumerate(files):
        try:
            x[start + offset] = np.asarray(load_image(path, size), dtype=np.uint8)
            errors.append(None)
        except BadImage as err:
            errors.append(str(err))
    x.flush()
    return errors


def decode(src: Source, image_size: int, scratch_dir: Path, on_bad_image: str = "skip",
           imap: Callable = map, progress: bool = False) -> Decoded:
    """Decode every file of ``src`` into a scratch file in ``scratch_dir``.

    ``imap`` (see :func:`worker_pool`) spreads the work over processes. Unusable files are
    skipped with one warning each, or stop everything under ``on_bad_image='fail'`` (the first
    in file order). The result does not depend on the number of processes.
    """
    from tqdm import tqdm

    n = len(src.files)
    path = Path(scratch_dir) / "originals.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, image_size, image_size, 3)).flush()
    tasks = [(str(path), start, src.files[start:start + CHUNK], image_size) for start in range(0, n, CHUNK)]
    rows: list[int] = []
    skipped: list[tuple[Path, str]] = []
    with tqdm(total=n, desc="decode", unit="img", disable=not progress) as bar:
        for (_, start, files, _), errors in zip(tasks, imap(_decode_chunk, tasks)):
            for offset, (file, error) in enumerate(zip(files, errors)):
                if error is None:
                    rows.append(start + offset)
                elif on_bad_image == "fail":
                    raise PipelineError(f"{file}: {error} (data.on_bad_image is 'fail'; remove the file "
                                        "or set it to 'skip')")
                else:
                    log.warning("skipping %s: %s", file, error)
                    skipped.append((file, error))
            bar.update(len(files))
    y = np.asarray([src.y[i] for i in rows], dtype=label_dtype(len(src.labels)))
    counts = np.bincount(y, minlength=len(src.labels))
    empty = [src.labels[k] for k in np.flatnonzero(counts == 0)]
    if empty:
        raise PipelineError(f"class folder(s) {empty} under {src.root} have no usable image: add "
                            "images or remove the folder (or its entry in data.labels)")
    return Decoded(x=np.load(path, mmap_mode="r"), rows=np.asarray(rows, dtype=np.int64), y=y,
                   skipped=skipped, path=path)


def label_dtype(n_classes: int) -> np.dtype:
    """Smallest unsigned type that holds every class index."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint32)


def preload_split() -> threading.Thread:
    """Import scikit-learn's splitter in a background thread, which is returned: the import takes
    about a second of CPU, which the decoding in worker processes can hide."""
    import importlib

    thread = threading.Thread(target=importlib.import_module, args=("sklearn.model_selection",),
                              name="sklearn-import", daemon=True)
    thread.start()
    return thread


def split_indices(y: np.ndarray, test_size: float, val_size: float, seed: int,
                  labels: list[str]) -> dict[str, np.ndarray]:
    """Stratified, seeded split of original-image indices into train / val / test.

    ``val_size`` is a fraction of what is left after the test split.
    """
    from sklearn.model_selection import train_test_split  # not at import: worker processes skip it

    counts = np.bincount(y, minlength=len(labels))
    need = 2 if val_size == 0 else 3
    small = {labels[k]: int(c) for k, c in enumerate(counts) if c < need}
    if small:
        raise PipelineError(f"class(es) {small} have too few images for a stratified split (need at "
                            f"least {need} each): add images or lower data.val_size to 0")
    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
        if val_size > 0:
            train, val = train_test_split(rest, test_size=val_size, stratify=y[rest], random_state=seed)
        else:
            train, val = rest, idx[:0]
    except ValueError as err:
        raise PipelineError(f"cannot split {len(y)} images into {len(labels)} classes with "
                            f"data.test_size={test_size}, data.val_size={val_size} ({err}); add "
                            "images or raise the fractions") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


ROTATE_RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR}


def augment_one(image: np.ndarray, angles: list[float], flip: bool, resample: str = "nearest",
                out: np.ndarray | None = None) -> np.ndarray:
    """The seed's augmentation: each angle's rotation, and its mirror image when ``flip``.

    Returns the copies stacked, in ``out`` when given (one copy of each image fewer). Corners
    that rotate in are black. ``nearest`` (the seed's choice) is about 5x faster than
    ``bilinear``, which gives smoother edges.
    """
    if out is None:
        out = np.empty((copies_per_image(angles, flip),) + image.shape, dtype=np.uint8)
    img = Image.fromarray(image)
    k = 0
    for angle in angles:
        rotated = img if angle == 0 else img.rotate(angle, resample=ROTATE_RESAMPLE[resample], fillcolor=(0, 0, 0))
        out[k] = rotated
        k += 1
        if flip:
            out[k] = rotated.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            k += 1
    return out


def copies_per_image(angles: list[float], flip: bool) -> int:
    return len(angles) * (2 if flip else 1)


def _augment_chunk(task: tuple[str, str, int, int, list[int], list[float], bool, str]) -> tuple[int, str]:
    """Worker: write the augmented copies of consecutive originals into their slots of x_train.

    The copies land in one contiguous byte range, written with one ``pwrite``: filling a fresh
    memory map page by page cost eight times as much CPU here. Returns how many originals it did
    and the SHA-1 of the bytes it wrote.
    """
    import hashlib

    originals_path, train_path, offset, first, rows, angles, flip, resample = task
    originals = np.load(originals_path, mmap_mode="r")
    copies = copies_per_image(angles, flip)
    block = np.empty((len(rows) * copies,) + originals.shape[1:], dtype=np.uint8)
    for n, row in enumerate(rows):
        augment_one(originals[row], angles, flip, resample, out=block[n * copies:(n + 1) * copies])
    fd = os.open(train_path, os.O_WRONLY)
    try:
        position = offset + first * copies * block[0].nbytes
        view = memoryview(block).cast("B")
        while view:  # pwrite may write less than asked
            written = os.pwrite(fd, view, position)
            position += written
            view = view[written:]
    finally:
        os.close(fd)
    return len(rows), hashlib.sha1(block).hexdigest()


def _copy_rows(target: Path, source: np.ndarray, rows: np.ndarray, chunk: int = 1024) -> None:
    """Copy ``source[rows]`` into a new .npy file without holding it all in memory."""
    out = np.lib.format.open_memmap(target, mode="w+", dtype=source.dtype, shape=(len(rows),) + source.shape[1:])
    for start in range(0, len(rows), chunk):
        out[start:start + chunk] = source[rows[start:start + chunk]]
    out.flush()


def write_prepared(out_dir: Path, decoded: Decoded, splits: dict[str, np.ndarray], labels: list[str],
                   angles: list[float], flip: bool, imap: Callable = map, progress: bool = False,
                   resample: str = "nearest") -> dict[str, int]:
    """Write x/y arrays per split (train augmented, val/test as decoded) and the label list.

    Everything lands in a temporary folder that replaces ``out_dir`` only when complete. Arrays
    are filled in place through memory maps, so none needs to fit in RAM; with ``imap`` from
    :func:`worker_pool`, processes augment in parallel, each writing its own slots, so the bytes
    do not depend on their number.

    Also writes ``manifest.json``: the MD5 of every file, where the large ``x_train.npy`` gets
    the MD5 of its header and of the SHA-1s its workers computed chunk by chunk as they wrote it
    (reading 0.7 GB again to hash it took as long as augmenting it; SHA-1 runs at 2.1 GB/s here,
    MD5 at 0.85). Returns the number of images per split.
    """
    import hashlib

    from tqdm import tqdm

    sizes: dict[str, int] = {}
    copies = copies_per_image(angles, flip)
    with atomic_dir(out_dir) as tmp:
        train_rows = decoded.rows[splits["train"]]
        shape = (len(train_rows) * copies,) + decoded.x.shape[1:]
        train_path = tmp / "x_train.npy"
        header = np.lib.format.open_memmap(train_path, mode="w+", dtype=np.uint8, shape=shape)
        offset = header.offset
        header.flush()
        del header
        rows = train_rows.tolist()
        tasks = [(str(decoded.path), str(train_path), offset, i, rows[i:i + CHUNK], list(angles), flip, resample)
                 for i in range(0, len(rows), CHUNK)]
        with open(train_path, "rb") as fh:
            fingerprint = hashlib.md5(fh.read(offset))
        with tqdm(total=len(rows), desc="augment", unit="img", disable=not progress) as bar:
            for done, chunk_sha1 in imap(_augment_chunk, tasks):
                fingerprint.update(bytes.fromhex(chunk_sha1))
                bar.update(done)
        np.save(tmp / "y_train.npy", np.repeat(decoded.y[splits["train"]], copies))
        sizes["train"] = shape[0]
        for name in ("val", "test"):
            _copy_rows(tmp / f"x_{name}.npy", decoded.x, decoded.rows[splits[name]])
            np.save(tmp / f"y_{name}.npy", decoded.y[splits[name]])
            sizes[name] = len(splits[name])
        (tmp / paths.LABELS_FILE).write_text(json.dumps(labels, ensure_ascii=False, indent=1) + "\n",
                                             encoding="utf-8")
        files = {p.name: md5_file(p) for p in sorted(tmp.iterdir()) if p.name != "x_train.npy"}
        files["x_train.npy"] = fingerprint.hexdigest()
        manifest = {"files": dict(sorted(files.items())),
                    "x_train.npy": f"md5 of its header and of the sha1 of each {CHUNK}-image chunk"}
        (tmp / paths.MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return sizes
