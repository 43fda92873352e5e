"""Typed errors of the core; the CLI maps them to one line and an exit code in one place."""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    OK = 0
    FAILURE = 1
    USAGE = 2  # usage or config error


class HlctlError(Exception):
    """An expected failure with a sentence for the user and, ideally, the next step."""

    exit_status: int = ExitStatus.FAILURE

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(HlctlError):
    """The lab config is missing, unreadable or invalid; carries every problem found."""

    exit_status = ExitStatus.USAGE

    def __init__(self, message: str, *, problems: list[str] | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []


class UsageError(HlctlError):
    exit_status = ExitStatus.USAGE
