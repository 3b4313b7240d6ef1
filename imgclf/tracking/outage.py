"""Riding out a tracking server that goes away: a restart, a network blip, a database failover.

Two ways through an outage, for two kinds of call:

- What can wait goes through the :class:`Outbox`: per-epoch metrics, params and tags found on
  the way, system metrics. A thread sends them in order, with the time they were taken; while
  the server is unreachable it keeps them and tries again with a growing pause (1 s to 30 s), so
  training never waits for the server and the run ends exactly as if nothing had happened.
- What cannot wait (opening a run, the artifacts and the model at the end, closing the run) is
  called through :func:`patiently`: retried with the same pauses for up to
  ``IMGCLF_TRACKING_WAIT`` seconds (default :data:`DEFAULT_WAIT`), then
  :class:`TrackingUnreachable`, one line that says what was not recorded and what to do.

The console says once that the server is gone and once that it is back (with how much it kept).
Only failures to reach the server count as an outage (connection refused or reset, a timeout,
a gateway's 502/503/504 after MLflow's own retries); any other error is raised at once.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from imgclf.core.errors import PipelineError

log = logging.getLogger("imgclf.tracking")

T = TypeVar("T")

DEFAULT_WAIT = 300.0  # seconds the calls that cannot go on without the server wait for it
WAIT_ENV = "IMGCLF_TRACKING_WAIT"
FIRST_PAUSE, LONGEST_PAUSE = 1.0, 30.0

# What MLflow's HTTP client says when the server cannot be reached (after its own retries).
_UNREACHABLE = (
    "Connection refused",
    "Connection aborted",
    "Connection reset",
    "RemoteDisconnected",
    "Max retries exceeded",
    "timed out",
)
# A gateway in front of the server that cannot reach it (urllib3's words after its retries, MLflow's).
_GATEWAY = re.compile(r"too many 50[234] error responses|error code 50[234]\b")


class TrackingUnreachable(PipelineError):
    """The tracking server stayed unreachable for longer than the wait."""


def wait_limit() -> float:
    """Seconds to wait for the server (``IMGCLF_TRACKING_WAIT``); a bad value is an error."""
    raw = os.environ.get(WAIT_ENV, "")
    if not raw:
        return DEFAULT_WAIT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise PipelineError(f"{WAIT_ENV}={raw!r} is not a number of seconds: set it to e.g. 300, or unset it")
    return value


def is_outage(err: BaseException) -> bool:
    """Whether ``err`` says the server could not be reached (not that it refused the request)."""
    import requests

    if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError):
        return True
    text = str(err)
    return "API request to" in text and (any(needle in text for needle in _UNREACHABLE) or bool(_GATEWAY.search(text)))


def reason(err: BaseException) -> str:
    """A short cause for a failure to use the tracking store, without the retry machinery's
    wall of text."""
    text = str(err)
    for needle, short in (
        ("Connection refused", "connection refused"),
        ("Connection reset", "connection reset"),
        ("Connection aborted", "connection aborted"),
        ("RemoteDisconnected", "connection closed"),
        ("unsupported URI", "unsupported URI scheme"),
        ("Name or service not known", "unknown host"),
        ("Failed to resolve", "unknown host"),
        ("timed out", "timed out"),
    ):
        if needle in text:
            return short
    gateway = _GATEWAY.search(text)
    if gateway:
        return f"HTTP {gateway.group(0)[-3:]}"
    if "Max retries exceeded" in text:
        return "no answer"
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= 200 else first[:200] + "..."


def _pauses():
    """Seconds to wait between tries: from :data:`FIRST_PAUSE`, doubling up to :data:`LONGEST_PAUSE`."""
    pause = FIRST_PAUSE
    while True:
        yield pause
        pause = min(pause * 2, LONGEST_PAUSE)


class _Health:
    """Whether the server answers, told once when it goes and once when it comes back."""

    def __init__(self):
        self._lock = threading.Lock()
        self.uri: str | None = None
        self.down_since: float | None = None

    def down(self, err: BaseException) -> None:
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        from imgclf.tracking.store import shown_uri

        log.warning(
            "tracking server %s unreachable (%s): training goes on and what it logs is kept for the server; "
            "what cannot go on without it (opening or closing a run, artifacts) waits up to %.0f s (%s)",
            shown_uri(),
            reason(err),
            wait_limit(),
            WAIT_ENV,
        )

    def up(self, kept: int = 0) -> None:
        """The server answered; ``kept``: how many records held back for it are now being sent."""
        with self._lock:
            if self.down_since is None:
                return
            gone = time.monotonic() - self.down_since
            self.down_since = None
        from imgclf.tracking.store import shown_uri

        sending = f": sending the {kept} records kept meanwhile" if kept else ""
        log.warning("tracking server %s is back after %.0f s%s", shown_uri(), gone, sending)

    def watch(self, uri: str) -> None:
        """Watch the store at ``uri``; forget what was known of another one (a process may
        switch stores, e.g. in tests)."""
        with self._lock:
            if uri != self.uri:
                self.uri, self.down_since = uri, None

    @property
    def is_down(self) -> bool:
        return self.down_since is not None


health = _Health()


def unreachable(what: str, reason: str = "no answer") -> TrackingUnreachable:
    """The one-line error for a server still unreachable after the wait, while doing ``what``."""
    from imgclf.tracking.store import shown_uri

    return TrackingUnreachable(
        f"tracking server {shown_uri()} unreachable for {wait_limit():.0f} s ({reason}) while {what}: "
        f"check MLFLOW_TRACKING_URI and run the stage again once the server answers (a finished training "
        f"is then recorded, not retrained; {WAIT_ENV} sets how long to wait)"
    )


def patiently(what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``, retried while the server is unreachable, for up to
    :func:`wait_limit` seconds from the first failure; then :class:`TrackingUnreachable`
    naming ``what`` (e.g. "logging the model")."""
    limit = wait_limit()
    deadline = None
    pauses = _pauses()
    while True:
        try:
            result = call(*args, **kwargs)
        except Exception as err:
            if not is_outage(err):
                raise
            health.down(err)
            now = time.monotonic()
            deadline = deadline or now + limit
            if now >= deadline:
                raise unreachable(what, reason(err)) from None
            time.sleep(min(next(pauses), deadline - now))
        else:
            if health.is_down:
                health.up(kept=_OUTBOX.pending())
            return result


class _Patient:
    """An MlflowClient whose every call is made :func:`patiently`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            return patiently(f"calling MLflow ({name})", attr, *args, **kwargs)

        return call


def client():
    """An MLflow client that waits out an outage (see :func:`patiently`)."""
    import mlflow

    return _Patient(mlflow.MlflowClient())


class Outbox:
    """Metrics, params and tags of runs, sent in order by a background thread; kept while the
    server is unreachable and sent when it is back. One per process: :func:`outbox`."""

    def __init__(self):
        self._items: collections.deque = collections.deque()  # ((uri, run_id), metrics, params, tags)
        self._cond = threading.Condition()
        self._sending = False
        self._thread: threading.Thread | None = None

    def log(
        self,
        run_id: str,
        metrics: dict[str, float] | None = None,
        step: int = 0,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> None:
        """Queue ``metrics`` (at ``step``, stamped now), ``params`` and ``tags`` of ``run_id``."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        self.put(
            run_id,
            metrics=[Metric(k, float(v), now, step) for k, v in (metrics or {}).items()],
            params=[Param(k, str(v)) for k, v in (params or {}).items()],
            tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
        )

    def put(self, run_id: str, metrics: Iterable = (), params: Iterable = (), tags: Iterable = ()) -> None:
        """Queue MLflow ``Metric``, ``Param`` and ``RunTag`` entries of ``run_id``."""
        import mlflow

        # The store is the one in use now (a test process may use several, one after another).
        item = ((mlflow.get_tracking_uri(), run_id), list(metrics), list(params), list(tags))
        with self._cond:
            self._items.append(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._send_all, name="imgclf-outbox", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, limit: float | None = None) -> bool:
        """Wait until everything queued is sent (True). While the server answers this waits as
        long as sending takes; it gives up (False) once the server has been unreachable for
        ``limit`` seconds (counted from the later of its going and this call)."""
        start = time.monotonic()
        with self._cond:
            while self._items or self._sending:
                down = health.down_since
                if limit is not None and down is not None and time.monotonic() - max(down, start) >= limit:
                    return False
                self._cond.wait(0.2)
            return True

    def drain(self, what: str) -> None:
        """:meth:`flush` with the wait of :func:`wait_limit`, or :class:`TrackingUnreachable`
        (``what``: what was being sent, e.g. "the epochs of trial run <id>")."""
        if not self.flush(wait_limit()):
            raise unreachable(f"sending {what} ({self.pending()} records)")

    def pending(self) -> int:
        """How many records are waiting to be sent."""
        with self._cond:
            return sum(len(m) + len(p) + len(t) for _, m, p, t in self._items)

    def _take(self) -> tuple[tuple[str, str], list, list, list]:
        """The next batch: queued items of one run, in order, within MLflow's batch limits."""
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

        with self._cond:
            self._cond.wait_for(lambda: self._items)
            self._sending = True
            run_id, metrics, params, tags = self._items.popleft()
            while self._items and self._items[0][0] == run_id:
                _, m, p, t = self._items[0]
                if (
                    len(metrics) + len(m) > MAX_METRICS_PER_BATCH
                    or len(params) + len(p) > MAX_PARAMS_TAGS_PER_BATCH
                    or len(tags) + len(t) > MAX_PARAMS_TAGS_PER_BATCH
                ):
                    break
                self._items.popleft()
                metrics, params, tags = metrics + m, params + p, tags + t
            return run_id, metrics, params, tags

    def _send_all(self) -> None:
        import mlflow

        while True:
            (uri, run_id), metrics, params, tags = self._take()
            client = mlflow.MlflowClient(uri)
            pauses = _pauses()
            while True:
                try:
                    client.log_batch(run_id, metrics=metrics, params=params, tags=tags)
                except Exception as err:
                    if is_outage(err):
                        health.down(err)
                        time.sleep(next(pauses))
                        continue
                    self._send_apart(client, run_id, metrics, params, tags, err)
                else:
                    if health.is_down:
                        health.up(kept=len(metrics) + len(params) + len(tags) + self.pending())
                break
            with self._cond:
                self._sending = False
                self._cond.notify_all()

    @staticmethod
    def _send_apart(client, run_id: str, metrics: list, params: list, tags: list, err: Exception) -> None:
        """A batch MLflow refused (not an outage, e.g. a param that may not change): send its
        metrics, params and tags apart, so one refused part loses only itself."""
        parts = [("metrics", metrics), ("params", params), ("tags", tags)]
        if sum(1 for _, part in parts if part) > 1:
            for kind, part in parts:
                if not part:
                    continue
                try:
                    client.log_batch(run_id, **{kind: part})
                except Exception as why:  # an outage here loses the part: rare, and said
                    log.warning("MLflow refused %d %s of run %s: %s", len(part), kind, run_id, why)
            return
        log.warning("MLflow refused %d records of run %s: %s", len(metrics) + len(params) + len(tags), run_id, err)


_OUTBOX = Outbox()


def outbox() -> Outbox:
    return _OUTBOX
