"""Importable logic of the image-classification pipeline.

The ``stages`` package holds thin DVC entry points; everything they call lives here and takes
plain arguments, so it can be tested without DVC or MLflow.
"""
