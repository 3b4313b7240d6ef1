"""Thin DVC stage entry points: ``python -m stages.<name>``; the logic lives in ``imgclf``."""
