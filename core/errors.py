"""The one exception type for mistakes a user can fix.

The CLI prints a :class:`UserError` as one message and exits with status 2;
any other exception is a bug and is shown with its traceback under ``--debug``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any


class UserError(Exception):
    """A mistake in the user's input: a file, a config field, a plugin name, an option value.

    Each part is optional, but a good message names as many as it can:
    the ``file``, the dotted ``field`` path, what was ``expected``, what was
    ``given`` and a ``hint`` (what to try instead).
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        field: str | None = None,
        expected: str | None = None,
        given: Any = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.field = field
        self.expected = expected
        self.given = given
        self.hint = hint

    def with_file(self, file: str) -> UserError:
        """Return this error with ``file`` filled in when it was not known where it was raised."""
        if self.file is None:
            self.file = file
        return self

    def __str__(self) -> str:
        where = ": ".join(part for part in (self.file, self.field) if part)
        text = f"{where}: {self.message}" if where else self.message
        if self.expected is not None:
            text += f"\n  expected: {self.expected}"
        if self.given is not None:
            text += f"\n  given: {_short_repr(self.given)}"
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


def close_matches(word: str, candidates: Iterable[str], limit: int = 3) -> list[str]:
    """The candidates that look like ``word``, best first (for "did you mean" hints)."""
    return difflib.get_close_matches(str(word), list(candidates), n=limit, cutoff=0.6)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the close matches of ``word``, or listing the candidates when none is close."""
    candidates = sorted(set(candidates))
    matches = close_matches(word, candidates)
    if matches:
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"
    if candidates:
        return "choose one of: " + ", ".join(candidates)
    return None


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_validation_error(
    exc: Any, *, prefix: str = "", file: str | None = None, model: Any = None
) -> UserError:
    """Turn a pydantic ``ValidationError`` into a :class:`UserError` about its first problem.

    ``prefix`` is the dotted path of the validated object inside the config
    (``"model"``), so the message names the field as the user wrote it;
    ``model`` is the pydantic model class that was validated, used to suggest
    the known keys when a key is unknown.
    """
    problems = exc.errors(include_url=False)
    first = problems[0]
    path = ".".join([prefix] if prefix else [])
    for part in first.get("loc", ()):
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    kind = first.get("type", "")
    message = first.get("msg", "invalid value")
    hint = None
    if kind == "extra_forbidden":
        message = "unknown key"
        allowed = _fields_at(model, first["loc"][:-1])
        if allowed:
            hint = did_you_mean(str(first["loc"][-1]), allowed)
    elif kind == "missing":
        message = "this field is required"
    elif kind == "value_error":
        message = message.removeprefix("Value error, ")
    more = len(problems) - 1
    if more:
        message += f" (and {more} more problem{'s' if more > 1 else ''} in this section)"
    given = first.get("input") if kind not in ("missing",) else None
    return UserError(message, file=file, field=path or None, given=given, hint=hint)


def _fields_at(model: Any, loc: tuple) -> list[str]:
    """The field names of the pydantic model found by following ``loc`` from ``model``."""
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            return []
        model = fields[part].annotation
        # Unwrap Optional[...] and similar unions to the model inside.
        for arg in getattr(model, "__args__", ()) or ():
            if hasattr(arg, "model_fields"):
                model = arg
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else []


class ValidationFailed(Exception):
    """An exported model disagrees with PyTorch or fails the ONNX checker; ``report`` holds the numbers."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a full disk); the last checkpoint is left intact."""
