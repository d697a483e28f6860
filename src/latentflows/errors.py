"""Exceptions that carry a message meant for the user: what went wrong and how to fix it.

The CLI turns every ``LatentflowsError`` into a one-line message and exit code 2,
so raising one of these is how library code reports bad input.
"""


class LatentflowsError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug).

    The CLI prints one as a one-line message and exits with code 2 instead of a traceback.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> import latentflows as lf
        >>> try:
        ...     lf.load("no/such/run")
        ... except lf.LatentflowsError as error:
        ...     print(error)
        no/such/run: no such run folder
    """


class DataError(LatentflowsError):
    """A data source is missing, empty, unreadable or has the wrong schema.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> from latentflows import load_images
        >>> try:
        ...     load_images("no/such/folder")
        ... except DataError as error:
        ...     print(type(error).__name__)
        DataError
    """


class ModelFileError(LatentflowsError):
    """A saved run or weights file is missing, truncated, foreign or incompatible.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> import latentflows as lf
        >>> isinstance(ModelFileError("x"), lf.LatentflowsError)
        True
    """


class UnknownComponentError(LatentflowsError):
    """A saved config names a component class that is not registered.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> import latentflows as lf
        >>> try:
        ...     lf.deserialize({"class": "NoSuchThing", "config": {}})
        ... except UnknownComponentError as error:
        ...     print(str(error)[:44])
        no component named 'NoSuchThing' is register
    """


class RunExistsError(LatentflowsError):
    """The output folder already holds something we would overwrite.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> import tempfile, pathlib
        >>> from latentflows.runs import RunFolder
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = (pathlib.Path(folder) / "notes.txt").write_text("mine")
        ...     try:
        ...         RunFolder(folder).prepare()
        ...     except RunExistsError:
        ...         print("refused")
        refused
    """
