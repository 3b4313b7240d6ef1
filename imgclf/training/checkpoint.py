"""Where an unfinished training keeps its checkpoints, and whether the next run may resume them.

A training's checkpoints live in one folder, ``<root>/train-<key>``:

- The root is ``$IMGCLF_CHECKPOINT_DIR``, else ``.imgclf/checkpoints`` in the main repository
  (``DVC_ROOT``). That is outside DVC's outputs, which DVC deletes before a stage runs. Queued
  and ``--temp`` experiments, which run in throw-away copies, find their checkpoints there too.
- The key is a digest of everything that shapes the model: the train params (all but
  settings), the prepared data's fingerprint, and the code that shapes the model (the train
  stage's code deps in :mod:`imgclf.pipeline`, plus the TensorFlow and Keras versions). Experiments with different
  params never share a folder, and a stale checkpoint is never resumed.
- ``state.json`` is the commit point: it names the TensorFlow checkpoint (``ckpt-N.*``, written
  by :class:`CheckpointWriter`) that matches it, and holds the rest of the state (epoch, step,
  history, early-stopping and learning-rate state, the MLflow run). It is replaced atomically
  after the checkpoint it names is complete, so a kill at any moment leaves a consistent pair.
- A ``lock`` (``flock``) keeps two processes from training into the same folder at once.

A fresh start removes the other, unlocked checkpoint folders after saying what differed from
them, so interrupted runs with old params do not pile up on disk. The folder is removed when
training completes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from imgclf import pipeline
from imgclf.core import paths
from imgclf.core.errors import PipelineError
from imgclf.core.params import Params

log = logging.getLogger(__name__)

ENV_DIR = "IMGCLF_CHECKPOINT_DIR"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
FORMAT = 1


def checkpoints_root() -> Path:
    """The folder holding every training's checkpoint folder (see the module docstring)."""
    configured = os.environ.get(ENV_DIR)
    if configured:
        return Path(configured).expanduser().resolve()
    return paths.store_root() / ".imgclf" / "checkpoints"


def code_digest(root: Path | None = None) -> str:
    """MD5 of the code that trains: the train stage's code deps (:mod:`imgclf.pipeline`, the same
    files DVC hashes for it, under ``root``, by default the project's), TF and Keras versions.
    Editing code that does not shape the model (evaluation, tuning, tracking) keeps a checkpoint."""
    import keras
    import tensorflow as tf

    root = root or paths.ROOT
    files = pipeline.code_files("train", root)
    digest = hashlib.md5(f"tensorflow {tf.__version__} keras {keras.__version__}\n".encode())
    for path in files:
        digest.update(f"{path.relative_to(root).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def identity(p: Params, data_fingerprint: str, init: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a checkpoint must match to be resumed; ``init``: the starting weights' origin
    (:meth:`imgclf.training.origin.Origin.key`), when there are any."""
    from imgclf.training.runtime import resolve_precision

    params = p.shaping("train")
    # The policy ``auto`` comes to on this machine: another one (a GPU gone) builds another
    # optimizer, which the checkpoint cannot be restored into.
    ident = {
        "params": params,
        "data": data_fingerprint,
        "code": code_digest(),
        "precision": resolve_precision(p.train.mixed_precision),
    }
    return {**ident, "init": init} if init else ident


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """What changed between two identities, in words."""
    out = []
    old_params, new_params = old.get("params", {}), new.get("params", {})
    for key in sorted(set(old_params) | set(new_params)):
        if old_params.get(key) != new_params.get(key):
            out.append(f"{key} {old_params.get(key)!r} -> {new_params.get(key)!r}")
    if old.get("data") != new.get("data"):
        out.append("the prepared data")
    if old.get("init") != new.get("init"):
        out.append("the starting weights (train.init)")
    if old.get("precision") != new.get("precision"):
        out.append(f"the precision train.mixed_precision comes to ({old.get('precision')} -> {new.get('precision')})")
    if old.get("code") != new.get("code"):
        out.append("the code")
    return out or ["its format"]


class Checkpoints:
    """One training's checkpoint folder, opened by :func:`open_checkpoints`.

    ``state`` is the committed state to resume from (``None``: start fresh). ``writer`` is false
    for a multi-worker cluster's non-chief workers: they read the chief's state but never write
    or remove it. Set ``run_id`` (the MLflow run) before the first :meth:`commit`.
    """

    def __init__(self, folder: Path, ident: dict[str, Any], state: dict[str, Any] | None, writer: bool, lock):
        self.folder = folder
        self.identity = ident
        self.state = state
        self.writer = writer
        self.run_id: str | None = state.get("run_id") if state else None
        self._lock = lock

    def commit(self, state: dict[str, Any]) -> None:
        """Make ``state`` (naming a complete TensorFlow checkpoint in the folder) the one to resume."""
        if not self.writer:
            return
        full = {"format": FORMAT, "identity": self.identity, "run_id": self.run_id, **state}
        _write_durably(self.folder / STATE_FILE, json.dumps(full, indent=1, sort_keys=True) + "\n")
        self.state = full

    def remove(self) -> None:
        """Delete the folder (training completed) and let go of the lock."""
        if self.writer:
            shutil.rmtree(self.folder, ignore_errors=True)
        self.close()

    def close(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


class CheckpointWriter:
    """Writes one training's TensorFlow checkpoint of ``variables`` (lists of variables by name)
    into its :class:`Checkpoints` folder, then commits the state that names it.

    With ``store`` None it writes nothing. A multi-worker cluster's non-chief worker takes part
    in each save (it may involve collective ops) into a scratch folder of its own, then drops it:
    the chief's checkpoint is the one kept.
    """

    def __init__(self, store: Checkpoints | None, **variables):
        import tensorflow as tf

        self.store = store
        self._variables = variables
        self.checkpoint = tf.train.Checkpoint(**variables)
        self.counter = int(store.state.get("counter", 0)) if store and store.state else 0
        self.manager = None
        if store is not None and store.writer:
            self.manager = tf.train.CheckpointManager(self.checkpoint, str(store.folder), max_to_keep=2)

    def restore(self) -> dict[str, Any] | None:
        """Load the committed checkpoint's variables; return its state (None: nothing to resume)."""
        state = self.store.state if self.store else None
        if not state:
            return None
        self.checkpoint.restore(str(self.store.folder / state["checkpoint"])).assert_existing_objects_matched()
        return state

    def save(self, state: dict[str, Any]) -> None:
        """Write the variables, then commit ``state`` naming them (see :meth:`Checkpoints.commit`)."""
        if self.store is None:
            return
        self.counter += 1
        if self.manager is None:
            scratch = self.store.folder / f".worker-{os.getpid()}"
            self.checkpoint.write(str(scratch / "ckpt"))
            shutil.rmtree(scratch, ignore_errors=True)
            return
        try:
            path = self.manager.save(checkpoint_number=self.counter)
            self.store.commit({"checkpoint": path.rsplit("/", 1)[-1], "counter": self.counter, **state})
        except Exception as err:
            if not _disk_full(err):
                raise
            self.counter -= 1
            raise self._out_of_space() from None

    def _out_of_space(self) -> PipelineError:
        """Remove what the failed save left, so the last committed checkpoint stays the one to
        resume; the error says where, how much space a checkpoint takes and what is free."""
        folder = self.store.folder
        committed = (self.store.state or {}).get("checkpoint")
        for leftover in folder.glob(f"ckpt-{self.counter + 1}*"):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
        (folder / f".{STATE_FILE}.tmp").unlink(missing_ok=True)
        size = sum(f.stat().st_size for f in folder.glob(f"{committed}.*")) if committed else 0
        need = size or sum(int(v.numpy().nbytes) for group in self._variables.values() for v in group)
        free = shutil.disk_usage(folder).free
        resume = f"it resumes from epoch {self.store.state['epoch']}" if committed else "it starts again"
        return PipelineError(
            f"no space left for a checkpoint in {folder}: one takes about {_size(need)}, {_size(free)} are free; "
            f"free some space (or set {ENV_DIR} to a bigger disk) and run the stage again: {resume}"
        )


def open_checkpoints(
    p: Params,
    data_fingerprint: str,
    writer: bool = True,
    discarded: list[tuple[str, str]] | None = None,
    init: dict[str, Any] | None = None,
) -> Checkpoints | None:
    """The checkpoint folder for ``p`` and the data, with the state to resume from if any.

    Returns ``None`` (train without checkpoints) when ``train.resume`` is false or another
    process holds the folder. Says in the log whether it resumes and why it does not. Each
    checkpoint it removes adds (its MLflow run, why) to ``discarded``: that run will never be
    carried on, so the stage closes it.
    """
    root = checkpoints_root()
    ident = identity(p, data_fingerprint, init)
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    folder = root / f"train-{key}"
    if not p.train.resume:
        if writer and folder.exists():
            _note(discarded, _read_state(folder), "train.resume is false")
            shutil.rmtree(folder, ignore_errors=True)
            log.info("train.resume is false: removed the checkpoint in %s; starting fresh", folder)
        return None
    lock = None
    if writer:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 (held until training ends)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            log.warning("another process is training with the same params and data (%s): no checkpoints", folder)
            return None
    state = _read_state(folder)
    if state is not None and state.get("identity") != ident:
        state = None  # a key collision, or a hand-edited file: never resume it
    if state is not None:
        log.info(
            "resuming from epoch %d%s (checkpoint in %s)",
            state["epoch"],
            f", {state['step']} steps into epoch {state['epoch'] + 1}" if state.get("step") else "",
            folder,
        )
    elif writer:
        for leftover in folder.iterdir():  # files of an attempt that never committed a state
            if leftover.name != LOCK_FILE:
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        _remove_stale(root, folder, ident, discarded)
    return Checkpoints(folder, ident, state, writer, lock)


def _note(discarded: list[tuple[str, str]] | None, state: dict[str, Any] | None, why: str) -> None:
    """Add a discarded checkpoint's run, and why, to ``discarded``."""
    if discarded is not None and state and state.get("run_id"):
        discarded.append((state["run_id"], f"its checkpoint of epoch {state.get('epoch', 0)} was discarded: {why}"))


def _read_state(folder: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("%s: unreadable (%s); starting fresh", folder / STATE_FILE, err)
        return None
    return state if isinstance(state, dict) and state.get("format") == FORMAT else None


def _remove_stale(root: Path, keep: Path, ident: dict[str, Any], discarded: list[tuple[str, str]] | None) -> None:
    """Remove the other checkpoint folders no process holds, saying why they are not resumed."""
    for folder in sorted(root.glob("train-*")):
        if folder == keep or not folder.is_dir():
            continue
        with open(folder / LOCK_FILE, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another training is using it
            state = _read_state(folder)
            if state is not None:
                changed = "; ".join(differences(state.get("identity", {}), ident))
                log.info(
                    "starting fresh: the checkpoint of epoch %d in %s does not match (changed: %s); removing it",
                    state.get("epoch", 0),
                    folder,
                    changed,
                )
                _note(discarded, state, f"changed: {changed}")
            shutil.rmtree(folder, ignore_errors=True)


def _size(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` says the disk (or the user's quota) is full: an OSError from Python, or
    TensorFlow's ResourceExhaustedError saying so."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


def _write_durably(target: Path, text: str) -> None:
    """Replace ``target`` with ``text`` so that a crash or power loss leaves the old or the new file."""
    tmp = target.with_name(f".{target.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    with contextlib.suppress(OSError):
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
