"""Phase 4 (optional, not a DVC stage), tuning: an Optuna search of the train and augment params
(:func:`~imgclf.tuning.search.run`), each trial exactly the train stage's training.
"""
