"""Training on several devices or machines: ``train.strategy`` and ``TF_CONFIG``.

``default`` is one device; ``mirrored`` is every local GPU (or logical CPUs, see
:func:`split_cpu`); ``multi_worker`` is ``MultiWorkerMirroredStrategy`` over the processes that
``TF_CONFIG`` lists. Keras 3's ``model.fit`` cannot run the last one (keras-team/keras#20585), so
:func:`imgclf.training.multi_worker.fit_multi_worker` has its own step loop.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from imgclf.core.errors import PipelineError

log = logging.getLogger(__name__)


def split_cpu(devices: int) -> None:
    """Present the CPU as ``devices`` logical devices (before TensorFlow starts), so multi-device
    code paths can run on a laptop; set by ``IMGCLF_CPU_DEVICES``."""
    import tensorflow as tf

    if devices > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * devices)


def tf_config() -> dict[str, Any]:
    """The cluster and this process's task from ``TF_CONFIG`` (for ``multi_worker``)."""
    raw = os.environ.get("TF_CONFIG", "")
    hint = (
        'set it on every worker, e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
        '"task": {"type": "worker", "index": 0}}'
    )
    if not raw:
        raise PipelineError(f"train.strategy is multi_worker but TF_CONFIG is not set: {hint}")
    try:
        config = json.loads(raw)
        workers = config["cluster"]["worker"]
        task = config["task"]
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as err:
        raise PipelineError(f"TF_CONFIG is not valid ({type(err).__name__}: {err}): {hint}") from None
    if (
        not isinstance(workers, list)
        or not workers
        or kind not in config["cluster"]
        or not 0 <= index < len(config["cluster"][kind])
    ):
        raise PipelineError(f"TF_CONFIG's task {task} is not in its cluster {config['cluster']}: {hint}")
    return config


def is_chief() -> bool:
    """True unless this process is a non-chief worker of a ``TF_CONFIG`` cluster.

    The chief is the task of type ``chief``, or worker 0 when the cluster has none; only it
    writes outputs and logs to MLflow.
    """
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return True
    config = tf_config()
    kind, index = config["task"]["type"], int(config["task"]["index"])
    return kind == "chief" or (kind == "worker" and index == 0 and "chief" not in config["cluster"])


def make_strategy(name: str):
    """The ``tf.distribute`` strategy for ``train.strategy``.

    ``default``: one device. ``mirrored``: every local GPU, or the logical CPUs when there is no
    GPU (see :func:`split_cpu`). ``multi_worker``: ``MultiWorkerMirroredStrategy`` over the
    processes ``TF_CONFIG`` lists, each using its local devices as ``mirrored`` would. In every
    case ``train.batch_size`` is the *global* batch, split evenly over all replicas.

    Call it before any other TensorFlow work: a multi-worker strategy sets up the runtime.
    """
    import tensorflow as tf

    cpus = int(os.environ.get("IMGCLF_CPU_DEVICES", "1") or 1)
    if cpus > 1:
        try:
            split_cpu(cpus)
        except RuntimeError:  # TensorFlow already started: keep the devices it has
            log.warning("IMGCLF_CPU_DEVICES=%d ignored: TensorFlow's devices are already set up", cpus)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        devices = [d.name for d in tf.config.list_logical_devices("GPU")]
        devices = devices or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        tf_config()  # a clear error before TensorFlow waits for a cluster that is not there
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy {name!r}")


def is_multi_worker(strategy) -> bool:
    import tensorflow as tf

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
