"""Exceptions that carry a message meant for the user: what went wrong and how to fix it.

The CLI turns every ``LatentflowsError`` into a one-line message and exit code 2,
so raising one of these is how library code reports bad input.
"""


class LatentflowsError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug)."""


class DataError(LatentflowsError):
    """A data source is missing, empty, unreadable or has the wrong schema."""


class ModelFileError(LatentflowsError):
    """A saved run or weights file is missing, truncated, foreign or incompatible."""


class UnknownComponentError(LatentflowsError):
    """A saved config names a component class that is not registered."""


class RunExistsError(LatentflowsError):
    """The output folder already holds something we would overwrite."""
