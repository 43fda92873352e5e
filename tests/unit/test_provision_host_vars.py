"""`hlctl provision --only host` hands the lab config to gpu_host.yml (hlctl_lab_config)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hlctl.cli.main import cli


def test_host_run_carries_the_lab_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hlctl.provision.runner as runner

    captured = []

    def fake_run(run, **kwargs):  # the playbook run itself is tested in the host-role tests
        captured.append(run)
        return runner.RunResult(playbook=run.playbook.name, returncode=0)

    monkeypatch.setattr(runner, "run_playbook", fake_run)
    config = tmp_path / "hlctl.yaml"
    config.write_text("models_dir: /srv/models\nhealth:\n  fan_stopped_above_c: 55\n")
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  children:\n    gpu_hosts:\n      hosts:\n"
                         "        gpu01:\n          ansible_host: 127.0.0.1\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "provision", "--only", "host",
                                      "--inventory", str(inventory)])
    assert result.exit_code == 0, result.output
    (run,) = captured
    assert run.playbook.name == "gpu_host.yml"
    assert run.extra_vars["hlctl_lab_config"] == {
        "models_dir": "/srv/models", "health": {"fan_stopped_above_c": 55}}
