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
        component: the registered name that was asked for, when there is one.

    Example:
        >>> import latentflows as lf
        >>> try:
        ...     lf.deserialize({"class": "NoSuchThing", "config": {}})
        ... except UnknownComponentError as error:
        ...     print(str(error)[:44])
        no component named 'NoSuchThing' is register
    """

    def __init__(self, *args: object, component: str | None = None):
        super().__init__(*args)
        self.component = component


class MissingModuleError(UnknownComponentError):
    """A run uses a component registered by a module that is not imported.

    A saved run records which modules registered its own components (``config.json``'s
    ``imports``), but latentflows never imports them itself: a run downloaded from the Hub
    must not run code. The message names the module and how to import it.

    Args:
        component: the registered name the run uses.
        module: the module that registered it when the run was saved.
        command: the ``latentflows`` command being run, whose ``--import`` the message names;
            None from Python.

    Example:
        >>> print(MissingModuleError("test.SigmoidAffine", "my_module", "sample"))
        run uses test.SigmoidAffine from module 'my_module'; pass --import my_module to latentflows sample
        >>> print(MissingModuleError("test.SigmoidAffine", "my_module"))
        run uses test.SigmoidAffine from module 'my_module'; import my_module before loading it
    """

    def __init__(self, component: str, module: str, command: str | None = None):
        how = f"pass --import {module} to latentflows {command}" if command else f"import {module} before loading it"
        super().__init__(f"run uses {component} from module {module!r}; {how}", component=component)
        self.module, self.command = module, command

    def for_command(self, command: str) -> "MissingModuleError":
        """The same error, naming the ``--import`` flag of ``command``."""
        return MissingModuleError(str(self.component), self.module, command)


class ArgumentError(LatentflowsError, ValueError):
    """A value out of its range, such as a sample count below 1: a ``ValueError`` too, as
    Python code expects of a bad argument.

    Args:
        *args: the message, as for any ``Exception``.

    Example:
        >>> isinstance(ArgumentError("x"), ValueError) and isinstance(ArgumentError("x"), LatentflowsError)
        True
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
