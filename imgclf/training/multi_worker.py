"""The multi-worker step loop: Keras 3's ``model.fit`` cannot run ``MultiWorkerMirroredStrategy``
(keras-team/keras#20585), so :func:`fit_multi_worker` steps through each epoch itself, with the
same :class:`~imgclf.training.fit.Session` hooks as ``model.fit``'s callbacks.
"""

from __future__ import annotations

import logging

import numpy as np

from imgclf.console import interrupt
from imgclf.core.errors import PipelineError
from imgclf.core.params import TrainParams
from imgclf.training.distribute import is_chief
from imgclf.training.streaming import shard_batches, validation_batches

log = logging.getLogger(__name__)


def fit_multi_worker(model, strategy, data, p: TrainParams, seed: int, session) -> None:
    """Synchronous data-parallel training over the workers of ``strategy``, step by step.

    Each worker reads its own share of each epoch's rows (:func:`~imgclf.training.streaming.shard_batches`)
    in batches of ``batch_size / replicas``; the optimizer sums the gradients of all replicas,
    and the loss is averaged over the global batch, so one step equals one ``batch_size`` step
    on one device. Every worker runs the same number of steps per epoch (the collective ops
    would hang otherwise). Validation runs on each worker's own copy of the weights, which are
    the same everywhere. ``session`` (:class:`~imgclf.training.fit.Session`) gets the same keys
    as ``model.fit`` gives.

    Every worker takes the same decisions at the same step: a signal on any worker rides along
    with the step's summed metrics, so all checkpoint and stop at that step; whether to stop
    early is the chief's decision, broadcast at each epoch's end.
    """
    global_batch = p.batch_size
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise PipelineError(
            f"train.batch_size {global_batch} cannot be split evenly over {replicas} "
            f"replicas: make it a multiple of {replicas}"
        )
    x_train, y_train = data.x["train"], data.y["train"]
    steps = session.steps
    at = session.state
    done = at.epoch * steps + at.step
    _check_same_position(strategy, done)
    batches = iter(_sharded_batches(strategy, x_train, y_train, global_batch, seed, done))
    from imgclf.training.fit import class_weights

    weights = class_weights(p, y_train, len(data.labels))
    val_ds = validation_batches(data, global_batch)
    phase = None
    while at.epoch < p.epochs and not at.stopped:
        epoch = at.epoch + 1
        if session.tuning.at(epoch) != phase:  # a fine-tuning phase: steps for the layers that learn in it
            phase = session.tuning.at(epoch)
            session.tuning.enter(model, epoch, recompile=False, starting=not at.step)
            train_step, val_step, agree = _step_functions(model, strategy, global_batch, weights)
        session.begin_epoch(epoch)
        totals = np.array(at.partial if at.step else [0.0, 0.0, 0.0])
        for step in range(at.step + 1, steps + 1):
            out = train_step(batches, _flags(interrupt.requested())).numpy()
            totals += out[:3]
            if out[3] > 0:
                interrupt.request()  # another worker got the signal: stop here with it
            session.end_step(epoch, step, totals.tolist)
        logs = {"accuracy": totals[1] / totals[2], "loss": totals[0] / totals[2]}
        if val_ds is not None:
            totals = sum(val_step(images, labels).numpy() for images, labels in val_ds)
            logs.update({"val_accuracy": totals[1] / totals[2], "val_loss": totals[0] / totals[2]})
        session.end_epoch(epoch, logs, check_signal=False)
        # The chief's early-stopping decision holds on every worker, and so does a signal that
        # came to any worker during validation (the epoch's checkpoint is written by now).
        stop, signalled = agree(_flags(at.stopped and is_chief(), interrupt.requested())).numpy()
        at.stopped = bool(stop > 0)
        if signalled > 0:
            interrupt.request()
            session.stop_at_epoch_end()


def _flags(*values: bool):
    """Booleans as a float32 vector of 0s and 1s, to be summed over the replicas."""
    import tensorflow as tf

    return tf.constant([1.0 if v else 0.0 for v in values], dtype=tf.float32)


def _check_same_position(strategy, position: int) -> None:
    """Stop with one line if the workers would resume from different steps (e.g. a worker cannot
    see the chief's checkpoint folder)."""
    import tensorflow as tf

    def local():
        return tf.constant([float(position)])

    every = strategy.gather(strategy.run(local), axis=0).numpy()
    if len(set(every.tolist())) > 1:
        raise PipelineError(
            f"the workers would resume from different steps ({sorted(set(every.astype(int).tolist()))}): "
            "each must see the chief's checkpoints; set IMGCLF_CHECKPOINT_DIR to a folder they share"
        )


def _sharded_batches(strategy, x: np.ndarray, y: np.ndarray, global_batch: int, seed: int, skip: int):
    """Endless per-replica batches, each worker reading its own share; ``skip`` steps done."""

    def one_pipeline(context):
        # A step takes a batch for each of the pipeline's replicas (a worker's GPUs).
        replicas_here = strategy.num_replicas_in_sync // context.num_input_pipelines
        return shard_batches(
            x,
            y,
            context.get_per_replica_batch_size(global_batch),
            seed,
            shard=(context.num_input_pipelines, context.input_pipeline_id),
            skip=skip * replicas_here,
        )

    return strategy.distribute_datasets_from_function(one_pipeline)


def _step_functions(model, strategy, global_batch: int, weights: dict[int, float] | None = None):
    """``train_step(iterator, flag)``, ``val_step(images, labels)`` and ``agree(flag)``.

    The first two return the summed [loss, correct, examples] of their batch over all replicas
    (see :func:`_sums`); ``train_step`` appends the sum of every replica's ``flag`` (a vector
    of one, see :func:`_flags`), and ``agree`` returns only such sums: how many replicas raised
    each flag. ``weights`` (class id: weight) weigh each example's training loss, as Keras's
    ``class_weight`` does.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    optimizer = model.optimizer
    variables = model.trainable_variables
    with strategy.scope():
        optimizer.build(variables)
    by_class = tf.constant([weights[k] for k in sorted(weights)], tf.float32) if weights else None

    def replica_step(images, labels, flag):
        with tf.GradientTape() as tape:
            probs = model(images, training=True)
            per_example = loss_fn(labels, probs)
            if by_class is not None:
                per_example = per_example * tf.gather(by_class, tf.cast(labels, tf.int32))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return tf.concat([_sums(labels, probs, per_example), flag], axis=0)

    @tf.function
    def train_step(iterator, flag):
        images, labels = next(iterator)
        totals = strategy.run(replica_step, args=(images, labels, flag))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, totals, axis=None)

    @tf.function
    def agree(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: flag), axis=None)

    @tf.function
    def val_step(images, labels):
        probs = model(images, training=False)
        return _sums(labels, probs, loss_fn(labels, probs))

    return train_step, val_step, agree


def _sums(labels, probs, per_example):
    """[sum of losses, correct predictions, examples] of one batch, as float32."""
    import tensorflow as tf

    labels = tf.cast(labels, tf.int32)
    hits = tf.cast(tf.equal(tf.argmax(probs, axis=-1, output_type=tf.int32), labels), tf.float32)
    return tf.stack(
        [tf.reduce_sum(tf.cast(per_example, tf.float32)), tf.reduce_sum(hits), tf.cast(tf.shape(labels)[0], tf.float32)]
    )
