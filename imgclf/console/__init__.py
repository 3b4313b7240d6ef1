"""What a person sees and does at the terminal: the stage wrapper (one-line errors, exit codes),
Ctrl-C and SIGTERM, progress lines. Nothing here changes an output, so no stage lists it as a dep.
"""
