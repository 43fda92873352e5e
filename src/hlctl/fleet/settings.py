"""The lab config's ``fleet`` section: fan-out timeout, SSH connection reuse, and when a
health result is stale."""

from __future__ import annotations

from pydantic import Field

from hlctl.settingsmodel import StrictModel


class FleetSettings(StrictModel):
    timeout_s: float = Field(20, gt=0, le=3600, description=(
        "how long `hlctl status|health --all` waits for each host (connect and answer)"))
    stale_after_s: float = Field(180, gt=0, description=(
        "a recorded health result older than this is stale: 3x the health timer's "
        "interval (OnCalendar=minutely)"))
    ssh_reuse_s: float = Field(60, ge=0, le=86400, description=(
        "keep each host's SSH connection open this long after a fleet command (OpenSSH "
        "ControlMaster/ControlPersist, as Ansible does), so the next one skips the key "
        "exchange; 0 opens a new connection every time"))
