"""What every section of the lab config shares: strict, frozen models and unique names."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A config section: unknown keys are errors (a typo must not pass silently), and the
    loaded config cannot change under the code that reads it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def require_unique_names(names: Iterable[str], what: str) -> None:
    """Raise (pydantic reports it at the field's path) when a name appears twice."""
    seen = list(names)
    duplicates = sorted({n for n in seen if seen.count(n) > 1})
    if duplicates:
        raise ValueError(f"{what} {duplicates[0]!r} is used twice")
