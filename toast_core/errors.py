"""Exception types the library raises for bad input. Callers (the app, the CLI) catch these and show
the message; anything else escaping the library is a bug."""


class ToastError(Exception):
    """Base class of every error the library raises on purpose."""


class InputError(ToastError, ValueError):
    """An image, file or argument that cannot be used. The message names the problem."""


class CheckpointError(ToastError, ValueError):
    """A checkpoint that cannot be read safely or does not fit the model. The message says what differs."""


class TrainingStopped(ToastError):
    """A run was asked to stop (a signal, a callback) and saved its state; running it again resumes."""
