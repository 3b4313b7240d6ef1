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
import time

from imgclf.core import internals

log = logging.getLogger(__name__)

FIRST_INTERVAL = 1.0  # seconds between samples at the start
LAST_INTERVAL = 10.0  # ... and once the run is ten minutes old
LONGEST_WINDOW = 60.0  # seconds a logged point may average, at most
PACE = 60.0  # a logged point about every age/PACE seconds


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
                    self.children[child.pid] = child
                    child.cpu_percent()  # the first reading of a process is always 0
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


def start(run_id: str):
    """Start sampling for run ``run_id`` in a daemon thread; return the monitor (or None if
    MLflow's monitor cannot start, e.g. without psutil: a warning, not a failure)."""
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        class PacedMonitor(SystemMetricsMonitor):
            def __init__(self, run_id: str):
                # resume_logging: a resumed training continues its figures' steps.
                super().__init__(run_id, sampling_interval=FIRST_INTERVAL, resume_logging=True)
                self.monitors.append(_process_monitor())
                self.started = time.monotonic()

            def collect_metrics(self):
                self.sampling_interval, self.samples_before_logging = pace(time.monotonic() - self.started)
                return super().collect_metrics()

            def finish(self):
                """Stop, and log the samples since the last point with one more taken now
                (MLflow's own ``finish`` drops them: a short stage would get no figures)."""
                stopped = internals.stop_system_monitor(self)
                if stopped is None:
                    return super().finish()
                if not stopped:
                    return
                try:
                    self.collect_metrics()
                    self.publish_metrics(self.aggregate_metrics())
                    self.mlflow_logger.flush()
                except Exception as err:
                    log.warning("the last system metrics were not logged: %s", err)

        monitor = PacedMonitor(run_id)
        monitor.start()
        return monitor
    except Exception as err:
        log.warning("no system metrics for this run: %s", err)
        return None
