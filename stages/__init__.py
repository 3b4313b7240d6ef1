"""Thin DVC stage entry points: ``python -m stages.<name>``; the logic lives in ``imgclf``."""

import sys

# Run as a program (`python -m stages.<name>`: while Python imports this package, before the
# stage's module, sys.argv[0] is "-m"), not imported by a test: the stage's imports run without
# the cyclic garbage collector, which the stage's wrapper resumes (imgclf/console/cli.py).
if sys.argv[:1] == ["-m"]:
    from imgclf.console.cli import pause_collector

    pause_collector()
