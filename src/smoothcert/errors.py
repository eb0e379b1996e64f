"""The project's own error types: what the command line reports as one line.

Every error raised for a user's input, file or setting derives from :class:`SmoothcertError`, so
the CLI catches exactly these and lets any other exception keep its traceback (a genuine bug is
never shortened to one line). The subclasses also derive from the built-in type that the same
error had before this module existed (ValueError, FileNotFoundError, RuntimeError), so code that
caught those keeps working.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "CompileError",
    "ConfigMismatchError",
    "InputError",
    "InputTypeError",
    "MissingFileError",
    "ResultFileError",
    "SmoothcertError",
]


class SmoothcertError(Exception):
    """Base of every error this project raises about what it was given."""


class InputError(SmoothcertError, ValueError):
    """An argument, tensor or hyperparameter out of range or of the wrong kind."""


class InputTypeError(SmoothcertError, TypeError):
    """An argument of the wrong type (a list where a tensor belongs, a str where a Noise does)."""


class MissingFileError(SmoothcertError, FileNotFoundError):
    """A data set, checkpoint or result file that is not where it was asked for."""


class ConfigMismatchError(InputError):
    """An existing result file was produced with a different configuration."""


class ResultFileError(InputError):
    """A result file that cannot be read or appended to: foreign header, malformed row, repeated idx."""


class CheckpointError(InputError):
    """A checkpoint file that cannot be used: no metadata, unknown architecture, mismatched weights."""


class CompileError(SmoothcertError, RuntimeError):
    """torch.compile could not compile the base model (no C++ compiler, unsupported Python or
    operator, ...); the model itself runs uncompiled."""
