"""Exceptions that carry a one-line, user-facing message.

Every problem a user can cause (a bad file, a wrong name, an impossible setting) raises a subclass of
:class:`NeuralCleanseError` whose message is one line naming the problem and the file or option. The CLI
prints ``error: <message>`` and exits with 1 for :class:`DataError`, :class:`ModelError` and
:class:`CheckpointError` (the input data, model or files) and 2 for :class:`SettingsError` (a bad option
value or combination). Anything else is a bug: the CLI prints one line naming the exception and the log
file holding its traceback, and exits with 3 (see ``docs/bad_inputs.md``).
"""

from __future__ import annotations

__all__ = [
    "NeuralCleanseError",
    "DataError",
    "CheckpointError",
    "ModelError",
    "SettingsError",
    "TriggerError",
    "exception_line",
    "first_line",
]


class NeuralCleanseError(Exception):
    """Base class for errors caused by input: the message is one line and names the problem."""


class DataError(NeuralCleanseError):
    """A dataset is missing, corrupt, or does not match what the model expects."""


class CheckpointError(DataError):
    """A scan checkpoint is missing, corrupt, or was written by another scan (model, images, settings)."""


class ModelError(NeuralCleanseError):
    """A model file or directory is missing, corrupt, unsafe, or does not fit its card."""


class SettingsError(NeuralCleanseError, ValueError):
    """A setting is out of range or an unknown name was given."""


class TriggerError(SettingsError):
    """A trigger cannot be built (too large, outside the image, bad spec)."""


class TriggerFileError(TriggerError, DataError):
    """A trigger file or image cannot be read (missing, corrupt, not a trigger): bad input data, so the
    command line exits with 1 like for any other unreadable file; still a :class:`TriggerError`."""


def first_line(error: BaseException | str, *, limit: int | None = None) -> str:
    """The first non-blank line of an exception's message (or of a text), cut to ``limit`` characters: what
    a one-line error quotes from an error it wraps. An exception with no message gives its type's name; a
    blank text gives ``""``."""
    text = error if isinstance(error, str) else str(error)
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    if not line and not isinstance(error, str):
        line = type(error).__name__
    return line if limit is None else shorten(line, limit)


def shorten(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word's end, with "..." where it was cut (a word
    longer than the whole limit is cut inside)."""
    if len(text) <= limit:
        return text
    room = max(0, limit - 3)
    cut = text.rfind(" ", 0, room + 1)
    return text[: cut if cut > room // 2 else room].rstrip(" ,;:") + "..."


def exception_line(error: BaseException) -> str:
    """``Type: first line`` of an exception (just ``Type`` when its message is blank): how a one-line error
    names an exception it did not expect (a bug, a cluster's failure)."""
    line = first_line(str(error))
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
