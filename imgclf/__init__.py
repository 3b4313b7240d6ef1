"""Importable logic of the image-classification pipeline.

The ``stages`` package holds thin DVC entry points; everything they call lives here and takes
plain arguments, so it can be tested without DVC or MLflow.
"""

import os

# Read by TensorFlow when it loads, so it must be set before anything imports it: keeps its
# C++ start-up chatter out of the stage logs. Users may override it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
