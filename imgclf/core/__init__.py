"""What every stage stands on: params, paths, atomic file writing and the one error type.

Code here shapes every stage's outputs, so every stage lists this folder under its DVC deps.
"""
