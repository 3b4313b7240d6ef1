"""Machine figures for each stage run: MLflow's system metrics, sampled at a pace that suits
a ten-second stage and a ten-hour one.

MLflow's monitor (psutil; NVIDIA's bindings when ``nvidia-ml-py`` is installed and a GPU is
there) samples at a fixed interval. Here the pace follows the run's age ``t``: a point about
every ``t/60`` seconds, from one a second at the start to one a minute after an hour, each point
the mean of the samples since the last. A 10 s stage gets about ten points per figure, a 10 h
one about 850. Beside MLflow's host-wide figures (``system/cpu_utilization_percentage``,
``system/system_memory_usage_megabytes``, disk, network, GPU), the stage's own process and its
worker processes are measured: ``system/process_cpu_percentage`` (100 = one core) and
``system/process_memory_rss_megabytes``.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

FIRST_INTERVAL = 1.0  # seconds between samples at the start
LAST_INTERVAL = 10.0  # ... and once the run is ten minutes old
LONGEST_WINDOW = 60.0  # seconds a logged point may average, at most
PACE = 60.0  # a logged point about every age/PACE seconds
PREFIX = "system/"  # MLflow's own name for these figures


def pace(age: float) -> tuple[float, int]:
    """(seconds between samples, samples per logged point) for a run ``age`` seconds old."""
    period = min(max(age / PACE, FIRST_INTERVAL), LONGEST_WINDOW)
    interval = min(period, LAST_INTERVAL)
    return interval, max(1, round(period / interval))


def _process_monitor():
    import psutil
    from mlflow.system_metrics.metrics.base_metrics_monitor import BaseMetricsMonitor

    class ProcessMonitor(BaseMetricsMonitor):
        """CPU and resident memory of this process and its children (e.g. augment's workers)."""

        def __init__(self):
            super().__init__()
            self.me = psutil.Process()
            self.me.cpu_percent()
            self.children: dict[int, psutil.Process] = {}

        def collect_metrics(self):
            procs = [self.me]
            for child in self.me.children(recursive=True):
                if child.pid not in self.children:
                    try:
                        child.cpu_percent()  # the first reading of a process is always 0
                    except psutil.Error:  # ended between listing and reading (a short-lived subprocess)
                        continue
                    self.children[child.pid] = child
                procs.append(self.children[child.pid])
            cpu = rss = 0.0
            for proc in procs:
                try:
                    cpu += proc.cpu_percent()
                    rss += proc.memory_info().rss
                except psutil.Error:  # ended between listing and reading
                    self.children.pop(proc.pid, None)
            self._metrics["process_cpu_percentage"].append(cpu)
            self._metrics["process_memory_rss_megabytes"].append(rss / 1e6)

        def aggregate_metrics(self):
            return {k: round(sum(v) / len(v), 1) for k, v in self._metrics.items()}

    return ProcessMonitor()


def _monitors() -> list:
    """MLflow's host-wide monitors (CPU, disk, network; a GPU's where there is one) and ours."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    found = [CPUMonitor(), DiskMonitor(), NetworkMonitor(), _process_monitor()]
    for module, name in (("gpu_monitor", "GPUMonitor"), ("rocm_monitor", "ROCMMonitor")):
        try:  # NVIDIA's or AMD's bindings and a GPU: either may be missing
            mod = __import__(f"mlflow.system_metrics.metrics.{module}", fromlist=[name])
            found.append(getattr(mod, name)())
            break
        except Exception:
            continue
    return found


class Sampler:
    """Samples the monitors in a daemon thread at :func:`pace`, and queues each point in the
    outbox (:mod:`~imgclf.tracking.outage`), so a tracking outage loses no point and never stops
    the sampling. A resumed run's points continue after its last step."""

    def __init__(self, run_id: str, first_step: int):
        from imgclf.tracking.outage import outbox

        self.run_id = run_id
        self.step = first_step
        self.monitors = _monitors()
        self.outbox = outbox()
        self.started = time.monotonic()
        self.stop = threading.Event()
        self.failed: set[str] = set()  # monitors that failed once (warned about)
        self.thread = threading.Thread(target=self._sample, name="imgclf-system-metrics", daemon=True)

    def _collect(self) -> None:
        for monitor in self.monitors:
            self._guarded(monitor, monitor.collect_metrics)

    def _publish(self) -> None:
        points = {}
        for monitor in self.monitors:
            if monitor.metrics:
                points.update(self._guarded(monitor, monitor.aggregate_metrics) or {})
            monitor.clear_metrics()
        if points:
            self.outbox.log(self.run_id, {f"{PREFIX}{k}": v for k, v in points.items()}, self.step)
            self.step += 1

    def _guarded(self, monitor, call):
        """``call()``; a failure (a GPU lost, a process gone) costs that monitor's figure, once
        with a warning, never the other figures or the rest of a long run's sampling."""
        try:
            return call()
        except Exception as err:
            name = type(monitor).__name__
            if name not in self.failed:
                self.failed.add(name)
                log.warning("system metrics: %s failed, the other figures go on: %r", name, err)
            return None

    def _sample(self) -> None:
        while not self.stop.is_set():
            interval, samples = pace(time.monotonic() - self.started)
            for _ in range(samples):
                self._collect()
                if self.stop.wait(interval):
                    return
            self._publish()

    def finish(self) -> None:
        """Stop, and queue the samples since the last point with one more taken now (a short
        stage would otherwise get no figures)."""
        self.stop.set()
        self.thread.join()
        try:
            self._collect()
            self._publish()
        except Exception as err:
            log.warning("the last system metrics were not logged: %s", err)


def next_step(client, run_id: str) -> int:
    """The step after the last system metric point of ``run_id`` (a resumed run), or 0."""
    history = client.get_metric_history(run_id, f"{PREFIX}process_cpu_percentage")
    return max((m.step for m in history), default=-1) + 1


def start(run_id: str, first_step: int = 0) -> Sampler | None:
    """Start sampling for run ``run_id`` (its points from ``first_step`` on); return the sampler,
    or None if the monitors cannot start (e.g. without psutil: a warning, not a failure)."""
    try:
        sampler = Sampler(run_id, first_step)
        sampler.thread.start()
        return sampler
    except Exception as err:
        log.warning("no system metrics for this run: %s", err)
        return None
