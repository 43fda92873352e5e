"""`hlctl provision` hands the hosts the lab config, the hlctl wheel and the router's secrets.

The playbook runs themselves are tested for real in the host-role tests; here the described
runs (PlaybookRun) are captured at the runner's edge.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from hlctl.cli.main import cli

INVENTORY = ("all:\n  children:\n    gpu_hosts:\n      hosts:\n"
             "        gpu01:\n          ansible_host: 127.0.0.1\n")


def _provision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config_text: str,
               *args: str, env: dict[str, str] | None = None) -> tuple[Any, list[Any]]:
    import hlctl.provision.runner as runner

    captured: list[Any] = []

    def fake_run(run: Any, **kwargs: Any) -> Any:
        captured.append(run)
        return runner.RunResult(playbook=run.playbook.name, returncode=0)

    monkeypatch.setattr(runner, "run_playbook", fake_run)
    config = tmp_path / "hlctl.yaml"
    config.write_text(config_text)
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(INVENTORY)
    wheel = tmp_path / "hlctl-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    environ = {**os.environ, "HLCTL_WHEEL": str(wheel), **(env or {})}
    result = CliRunner().invoke(cli, ["--config", str(config), "provision", *args,
                                      "--inventory", str(inventory)], env=environ)
    return result, captured


def test_host_run_carries_the_lab_config_and_the_wheel(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, captured = _provision(
        tmp_path, monkeypatch, "models_dir: /srv/models\nhealth:\n  fan_stopped_above_c: 55\n",
        "--only", "host")
    assert result.exit_code == 0, result.output
    (run,) = captured
    assert run.playbook.name == "gpu_host.yml"
    assert run.extra_vars["hlctl_lab_config"] == {
        "models_dir": "/srv/models", "health": {"fan_stopped_above_c": 55}}
    assert run.extra_vars["hlctl_agent_package_file"].endswith("hlctl-0.1.0-py3-none-any.whl")
    assert "hlctl_stack_secrets" not in run.extra_vars


ROUTER = """router:
  keys: [{name: alice, secret: {env: ALICE_KEY}}]
  local: [{name: gpu, url: "http://llama-server:8080"}]
  cloud: {url: "https://api.openai.com/v1", model: gpt-4o-mini, api_key: {env: OPENAI_KEY},
          input_usd_per_1m: 0.15, output_usd_per_1m: 0.6}
"""


def test_full_run_is_host_then_stack_with_the_secrets_in_extra_vars_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, captured = _provision(tmp_path, monkeypatch, ROUTER,
                                  env={"ALICE_KEY": "sk-alice", "OPENAI_KEY": "sk-openai"})
    assert result.exit_code == 0, result.output
    assert [r.playbook.name for r in captured] == ["gpu_host.yml", "stack.yml"]
    host, stack = captured
    for run in captured:
        router = run.extra_vars["hlctl_lab_config"]["router"]
        assert router["keys"][0]["secret"] == {"file": "/run/secrets/router_key"}
        assert router["cloud"]["api_key"] == {"file": "/run/secrets/cloud_api_key"}
    assert "hlctl_stack_secrets" not in host.extra_vars
    assert sorted(f["content"] for f in stack.extra_vars["hlctl_stack_secrets"]) == [
        "sk-alice", "sk-openai"]
    assert "sk-" not in result.output


def test_stack_run_names_a_missing_secret(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    result, captured = _provision(tmp_path, monkeypatch, ROUTER, "--only", "stack",
                                  env={"ALICE_KEY": "sk-alice", "OPENAI_KEY": ""})
    assert result.exit_code == 2 and not captured
    assert "router.cloud.api_key: secret env var OPENAI_KEY is not set" in result.output


def test_wheel_that_is_not_a_wheel_is_refused(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    result, captured = _provision(tmp_path, monkeypatch, "", "--only", "host",
                                  env={"HLCTL_WHEEL": str(tmp_path / "nope.tar")})
    assert result.exit_code == 2 and not captured
    assert "not a wheel file" in result.output
