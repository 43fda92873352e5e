"""The hlctl-health service and timer templates: rendered with jinja2 as Ansible would, then
checked by systemd's own parser (``systemd-analyze verify``) and for the settings we promise.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest

TEMPLATES = Path(__file__).parents[2] / "roles" / "gpu_healthcheck" / "templates"
AGENT_TEMPLATES = Path(__file__).parents[2] / "roles" / "hlctl_agent" / "templates"
AGENT_UNITS = ("hlctl-agent.socket", "hlctl-agent.service")
UNITS = ("hlctl-health.service", "hlctl-health.timer")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

# Every variable the templates use; the role's defaults/main.yml must define each of them.
VARIABLES = {
    "ansible_managed": "Ansible managed",
    "gpu_healthcheck_textfile_dir": "/var/lib/prometheus/node-exporter",
    "gpu_healthcheck_config_file": "/etc/hlctl/hlctl.yaml",
    "gpu_healthcheck_timeout_s": 50,
    "gpu_healthcheck_randomized_delay_s": 10,
}


def _hlctl_bin() -> Path:
    # verify insists that ExecStart's program exists and is executable
    path = Path(sys.executable).parent / "hlctl"
    if not path.exists():
        pytest.skip(f"console script {path} is not installed (pip install -e .)")
    return path


def _render(name: str, templates: Path = TEMPLATES, **overrides: object) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(templates),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(f"{name}.j2").render(**{**VARIABLES, **overrides})


def _settings(text: str) -> dict[str, dict[str, list[str]]]:
    """Unit file -> {section: {key: [values]}}; keys may repeat, as systemd allows."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key, []).append(value)
    return sections


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    hlctl = _hlctl_bin()
    for name in UNITS:
        (tmp_path / name).write_text(_render(name, gpu_healthcheck_hlctl_bin=str(hlctl)))
    return tmp_path


def test_systemd_analyze_verify_accepts_both_units(rendered: Path) -> None:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    run = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no",
                          *(str(rendered / n) for n in UNITS)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=rendered)
    output = run.stdout + run.stderr
    # verify prints unknown keys and bad values as warnings yet exits 0: check the text too
    ours = [line for line in output.splitlines()
            if "hlctl-health" in line or str(rendered) in line]
    assert run.returncode == 0, output
    assert ours == [], output


def test_verify_would_catch_a_broken_unit(rendered: Path) -> None:
    """The check above can fail: a typo and a missing program are reported."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    broken = rendered / "hlctl-health.service"
    broken.write_text(_render("hlctl-health.service",
                              gpu_healthcheck_hlctl_bin=str(rendered / "no-such-hlctl"))
                      .replace("Type=oneshot", "Typ=oneshot"))
    run = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(broken)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=rendered)
    assert run.returncode != 0
    assert "Unknown key 'Typ'" in run.stderr and "no-such-hlctl" in run.stderr


def test_service_runs_the_check_as_a_oneshot_with_nagios_results_as_success() -> None:
    text = _render("hlctl-health.service", gpu_healthcheck_hlctl_bin="/opt/hlctl/bin/hlctl")
    service = _settings(text)["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["ExecStart"] == ["/opt/hlctl/bin/hlctl health --notify --prometheus "
                                    "/var/lib/prometheus/node-exporter/hlctl.prom"]
    assert 0 < int(service["TimeoutStartSec"][0]) < 60  # below the timer's interval
    # WARNING (1) and CRITICAL (2) are results; UNKNOWN (3) is a check that could not run
    assert service["SuccessExitStatus"][0].split() == ["1", "2"]
    assert "HLCTL_CONFIG=/etc/hlctl/hlctl.yaml" in service["Environment"]
    assert "-/var/lib/prometheus/node-exporter" in service["ReadWritePaths"]
    # hardening that would cut NVML or the kernel log off must stay out
    for key in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "ProtectClock",
                "ProtectKernelLogs", "ProcSubset", "MemoryDenyWriteExecute"):
        assert key not in service, key
    assert "CAP_SYSLOG" in service["CapabilityBoundingSet"][0].split()
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]


def test_timer_runs_every_minute_persistently_with_a_small_delay() -> None:
    timer = _settings(_render("hlctl-health.timer"))["Timer"]
    assert timer["OnCalendar"] == ["minutely"]
    assert timer["Persistent"] == ["true"]
    assert 0 < int(timer["RandomizedDelaySec"][0]) <= 30
    assert timer["AccuracySec"] == ["1s"]
    assert timer["Unit"] == ["hlctl-health.service"]


def test_templates_name_every_variable_they_need() -> None:
    for name in UNITS:
        with pytest.raises(jinja2.UndefinedError):
            jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                               undefined=jinja2.StrictUndefined).get_template(
                f"{name}.j2").render()
        _render(name, gpu_healthcheck_hlctl_bin="/x")  # complete with VARIABLES


def _agent_unit(name: str, hlctl: str = "/usr/local/bin/hlctl", group: str = "") -> str:
    return _render(name, AGENT_TEMPLATES, hlctl_agent_bin_link=hlctl,
                   hlctl_agent_idle_exit_s=300, hlctl_agent_config_dir="/etc/hlctl",
                   hlctl_agent_state_dir="/var/lib/hlctl", hlctl_agent_socket_group=group)


def test_systemd_analyze_verify_accepts_the_agent_units(tmp_path: Path) -> None:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    hlctl = _hlctl_bin()
    for name in AGENT_UNITS:
        (tmp_path / name).write_text(_agent_unit(name, str(hlctl)))
    run = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no",
                          *(str(tmp_path / n) for n in AGENT_UNITS)],
                         capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    assert [line for line in output.splitlines()
            if "hlctl-agent" in line or str(tmp_path) in line] == [], output


def test_agent_socket_is_roots_and_starts_the_idle_exiting_agent() -> None:
    socket_unit = _settings(_agent_unit("hlctl-agent.socket"))
    # where `hlctl agent status` asks first
    from hlctl.fleet.agent_client import DEFAULT_AGENT_SOCKET

    assert socket_unit["Socket"]["ListenStream"] == [DEFAULT_AGENT_SOCKET]
    assert socket_unit["Socket"]["SocketMode"] == ["0600"]
    assert socket_unit["Install"]["WantedBy"] == ["sockets.target"]
    service = _settings(_agent_unit("hlctl-agent.service"))["Service"]
    assert service["ExecStart"] == ["/usr/local/bin/hlctl agent serve --idle-exit 300"]
    assert "HLCTL_CONFIG=/etc/hlctl/hlctl.yaml" in service["Environment"]
    assert service["ProtectSystem"] == ["strict"] and service["NoNewPrivileges"] == ["yes"]
    assert service["ReadWritePaths"] == ["-/var/lib/hlctl"]


def test_agent_socket_group_opens_it_to_that_group_alone() -> None:
    assert "SocketGroup" not in _settings(_agent_unit("hlctl-agent.socket"))["Socket"]
    shared = _settings(_agent_unit("hlctl-agent.socket", group="sudo"))["Socket"]
    assert shared["SocketGroup"] == ["sudo"] and shared["SocketMode"] == ["0660"]
