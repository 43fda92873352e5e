"""The hlctl wheel that the hosts install (the agent's venv, the router image).

hlctl is installed on hosts from a wheel the controller hands them: ``--wheel`` or
``$HLCTL_WHEEL``, else one built from this source checkout when hlctl runs from one. An hlctl
installed from a package index has neither; the hosts then install the same version from
their index (``hlctl_agent_package``), and the router image needs ``--wheel``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from hlctl.errors import HlctlError, UsageError


def source_checkout() -> Path | None:
    """The checkout this hlctl runs from (src layout), or None for an installed package."""
    root = Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    try:
        if 'name = "hlctl"' in pyproject.read_text():
            return root
    except OSError:
        pass
    return None


def find_wheel(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """``--wheel``, else ``$HLCTL_WHEEL``; checked to be a wheel file."""
    chosen = explicit or (Path(environ["HLCTL_WHEEL"]) if environ.get("HLCTL_WHEEL") else None)
    if chosen is None:
        return None
    if chosen.suffix != ".whl" or not chosen.is_file():
        raise UsageError(f"--wheel {chosen}: not a wheel file",
                         hint="build one with 'pip wheel --no-deps -w dist .'")
    return chosen.resolve()


def build_wheel(checkout: Path, out_dir: Path) -> Path:
    """``pip wheel --no-deps`` of the checkout into ``out_dir`` (a few seconds)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(out_dir), str(checkout)], capture_output=True, text=True)
    wheels = sorted(out_dir.glob("hlctl-*.whl"))
    if done.returncode != 0 or not wheels:
        last = (done.stderr.strip().splitlines() or ["no wheel was written"])[-1]
        raise HlctlError(f"building the hlctl wheel from {checkout} failed: {last}",
                         hint="pass a built wheel with --wheel")
    return wheels[-1]
