"""A small process pool for CPU-bound image work: an order-preserving ``imap`` that never hangs.

Why not the standard library's pools: ``multiprocessing.Pool`` deadlocks in ``terminate()`` when
a worker is killed while it holds the shared queue's lock, and ``ProcessPoolExecutor`` feeds its
workers from a thread that needs this process's GIL, so workers wait whenever the parent is busy
importing. Here each worker gets its whole share of a map at once through a pipe of its own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any


def default_workers() -> int:
    """Cores this process may use (respects CPU affinity, e.g. in containers)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[Callable[[Callable, Iterable], Iterator]]:
    """Yield ``imap(fn, tasks)``: ``fn`` applied to each task over ``workers`` processes, in order.

    With one worker it is the builtin ``map``. Task ``i`` of a map goes to worker
    ``i % workers``. A worker that dies (SIGTERM, out of memory) makes the map raise instead of
    hanging; an exception raised by a task is raised here. One pool serves several maps, so its
    start-up is paid once; a map left unfinished breaks the pool.

    Workers are forked when this process runs a single thread (nothing to import again) and
    spawned otherwise: a fork copies locks that another thread may be holding.
    """
    if workers <= 1:
        yield map
        return
    pool = _Pool(workers)
    try:
        yield pool.imap
    except BaseException:
        pool.kill()
        raise
    finally:
        pool.close()


class _Pool:
    """Worker processes, each with a pipe for its tasks and one for its results."""

    def __init__(self, workers: int):
        single = threading.active_count() == 1
        method = "fork" if single and "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self.procs: list[tuple[Any, Any, Any]] = []
        self.broken = ""
        try:
            for _ in range(workers):
                task_out, task_in = context.Pipe(duplex=False)
                result_out, result_in = context.Pipe(duplex=False)
                proc = context.Process(target=_serve, args=(task_out, result_in), daemon=True)
                proc.start()
                task_out.close()
                result_in.close()
                self.procs.append((proc, task_in, result_out))
        except BaseException:
            self.kill()
            self.close()
            raise

    def imap(self, fn: Callable, tasks: Iterable) -> Iterator:
        if self.broken:
            raise RuntimeError(self.broken)
        tasks = list(tasks)
        n = len(self.procs)
        for k, (_, send, _) in enumerate(self.procs):
            send.send((fn, tasks[k::n]))
        received = 0
        try:
            for i in range(len(tasks)):
                proc, _, receive = self.procs[i % n]
                try:
                    ok, value = receive.recv()
                except EOFError:
                    raise RuntimeError(
                        f"worker process {proc.pid} died (exit code {proc.exitcode}); see "
                        "the messages above, e.g. the system running out of memory"
                    ) from None
                received += 1
                if not ok:
                    raise value
                yield value
        finally:
            if received < len(tasks):  # results still on their way: the pool cannot be reused
                self.broken = "worker pool abandoned after a failed or unfinished map"
                self.kill()

    def kill(self) -> None:
        for proc, _, _ in self.procs:
            if proc.is_alive():
                proc.kill()

    def close(self) -> None:
        """Tell every worker to stop, then wait for it."""
        for _, send, _ in self.procs:
            with contextlib.suppress(OSError):
                send.send(None)
            send.close()
        for proc, _, receive in self.procs:
            proc.join()
            receive.close()


def _serve(tasks_in, results_out) -> None:
    """A worker's loop: run each share of tasks it is sent, sending back (ok, result) pairs."""
    # SIGTERM ends a worker at once; Ctrl-C is the parent's to handle (it stops the pool). A
    # forked worker would otherwise inherit the stage's handlers.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
