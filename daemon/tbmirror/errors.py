"""The exception hierarchy: every error tbmirror raises on purpose is a `TbmirrorError`.

The CLI turns each class into one line on stderr and an exit code (`exit_code`).
"""

from __future__ import annotations


class TbmirrorError(Exception):
    """Base class; `exit_code` is what the CLI exits with when this error ends a command."""

    exit_code = 1


class ConfigError(TbmirrorError):
    """The configuration file is missing, unreadable or invalid (EX_CONFIG)."""

    exit_code = 78


class ParseError(TbmirrorError):
    """Outside input (an answer, a tag, a file, a line) that cannot be read: malformed, too
    large or nested too deeply (tbmirror.parsers). It fails only the unit it belongs to."""


class SourceError(TbmirrorError):
    """A source could not be read: unreachable, refused, or answered with an error."""


class StoppedError(SourceError):
    """The daemon is stopping: the request was abandoned."""


class AuthError(SourceError):
    """A source refused our credentials, or no token could be obtained for it."""


class MirrorError(TbmirrorError):
    """The mirror root or the state store cannot be written or is inconsistent."""


class UnsafePathError(MirrorError):
    """A computed path would leave the mirror root."""


class WriteFault(MirrorError):
    """Writing to the mirror failed; the batch is kept and written again on the next pass
    (journal/faults.py says when and why)."""

    def __init__(self, owner: str, cause: str, path: str, detail: str) -> None:
        super().__init__(
            f"writes to the mirror fail ({cause}: {detail}) at {path}; "
            "what was written is kept and completed once writes succeed again"
        )
        self.owner, self.cause, self.path = owner, cause, path


class UnexpectedError(TbmirrorError):
    """A bug or unexpected data ended a pass: `error`, the exception met (named by its type)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(f"unexpected {type(error).__name__}: {error}")
        self.error = error
