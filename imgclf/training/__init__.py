"""Phase 2, training: the model, its input pipeline, the fit loop (:func:`~imgclf.training.fit.train`),
checkpoints for resume, schedules and early stopping, several devices.
"""
