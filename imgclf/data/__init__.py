"""Phase 1, data: class folders -> decoded images -> a stratified split -> augmented uint8 arrays
in ``data/prepared`` (:func:`~imgclf.data.augmentation.prepare`), plus the embedded demo images.
"""
