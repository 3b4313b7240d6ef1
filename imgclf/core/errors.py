"""The one exception type that stages turn into a one-line message and a non-zero exit."""


class PipelineError(Exception):
    """A problem the user can fix (bad params, bad data); the message says what to do."""
