"""The lab config's ``fleet`` section: fan-out timeout and when a health result is stale."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class FleetSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float = Field(20, gt=0, le=3600, description=(
        "how long `hlctl status|health --all` waits for each host (connect and answer)"))
    stale_after_s: float = Field(180, gt=0, description=(
        "a recorded health result older than this is stale: 3x the health timer's "
        "interval (OnCalendar=minutely)"))
