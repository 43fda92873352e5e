"""The lab config: the example validates, errors carry key paths, precedence, secrets."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from hlctl.cli.main import cli
from hlctl.config import LabConfig, SecretRef, load_config
from hlctl.errors import ConfigError
from hlctl.templates import example_config


def run(args: list[str], env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, args, env=env, catch_exceptions=False)


def test_example_config_validates_against_model_and_json_schema() -> None:
    data = yaml.safe_load(example_config())
    LabConfig.model_validate(data)
    schema = LabConfig.model_json_schema()
    # Paths come out of YAML as strings; the JSON schema must accept the file as written.
    jsonschema.validate(data, schema)


def test_example_config_documents_every_key() -> None:
    text = example_config()
    for key in LabConfig.model_fields:
        # Optional sections the starter leaves off are documented commented out.
        assert f"\n{key}:" in text or f"\n# {key}:" in text, key
    for key in ("slowdown_margin_c", "crit_c", "warn_c", "fan_stopped_above_c",
                "min_cuda_driver_version", "critical", "warning", "kernel_log",
                "webhooks", "heartbeat_url", "timeout_s"):
        assert f" {key}:" in text, key


def test_check_lists_every_problem_with_its_key_path(tmp_path: Path) -> None:
    bad = tmp_path / "hlctl.yaml"
    bad.write_text("health:\n  temperature:\n    warn_c: 95\n  temprature: 1\n"
                   "alerts:\n  webhooks:\n    - name: a\n      url: https://x\n"
                   "      token: hunter2\n")
    result = run(["--config", str(bad), "config", "check"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert "health.temperature.warn_c: must be below crit_c (95 >= 90)" in lines
    assert any(line.startswith("health.temprature: unknown key") for line in lines)
    assert any(line.startswith("alerts.webhooks[0].token: secrets are never written inline")
               for line in lines)
    assert "hunter2" not in result.output + result.stderr


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "hlctl.yaml"
    bad.write_text("health:\n  temperature: [1, 2\n")
    result = run(["--config", str(bad), "config", "check"])
    assert result.exit_code == 2
    assert "line 3" in result.stderr or "line 2" in result.stderr


def test_missing_explicit_config_is_a_usage_error(tmp_path: Path) -> None:
    result = run(["--config", str(tmp_path / "nope.yaml"), "config", "show"])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "hlctl init" in result.stderr


def test_precedence_flags_over_env_over_file(tmp_path: Path) -> None:
    path = tmp_path / "hlctl.yaml"
    path.write_text("models_dir: /from/file\nhealth:\n  fan_stopped_above_c: 50\n")
    env = {"HLCTL_MODELS_DIR": "/from/env", "HLCTL_HEALTH__TEMPERATURE__CRIT_C": "88"}
    loaded = load_config(path, environ=env)
    assert loaded.config.models_dir == Path("/from/env")
    assert loaded.config.health.temperature.crit_c == 88
    assert loaded.config.health.fan_stopped_above_c == 50
    flagged = load_config(path, environ=env, overrides={"models_dir": "/from/flag"})
    assert flagged.config.models_dir == Path("/from/flag")


def test_search_order_uses_hlctl_config_env(tmp_path: Path) -> None:
    path = tmp_path / "lab.yaml"
    path.write_text("models_dir: /x\n")
    assert load_config(environ={"HLCTL_CONFIG": str(path)}).source == path


def test_secret_refs_resolve_and_refuse_open_files(tmp_path: Path) -> None:
    assert SecretRef(env="TOK").reveal({"TOK": "s3"}) == "s3"
    with pytest.raises(ConfigError, match="TOK is not set"):
        SecretRef(env="TOK").reveal({})
    secret = tmp_path / "token"
    secret.write_text("s3\n")
    os.chmod(secret, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        SecretRef(file=secret).reveal()
    os.chmod(secret, 0o600)
    assert SecretRef(file=secret).reveal() == "s3"


def test_show_redacts_secrets(tmp_path: Path) -> None:
    path = tmp_path / "hlctl.yaml"
    path.write_text("alerts:\n  webhooks:\n    - name: phone\n      url: https://ntfy.example/t\n"
                    "      kind: ntfy\n      token: {env: NTFY_TOKEN}\n")
    result = run(["--config", str(path), "config", "show", "--json"],
                 env={"NTFY_TOKEN": "tk_supersecret"})
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["config"]["alerts"]["webhooks"][0]["token"] == "<secret env:NTFY_TOKEN>"
    assert "tk_supersecret" not in result.output


def test_init_writes_refuses_and_forces(tmp_path: Path) -> None:
    result = run(["init", "--dir", str(tmp_path)])
    assert result.exit_code == 0
    config = tmp_path / "hlctl.yaml"
    inventory = tmp_path / "inventory" / "hosts.yml"
    assert config.is_file() and inventory.is_file()
    load_config(config, environ={})  # the starter config is valid as written
    assert "gpu_hosts" in yaml.safe_load(inventory.read_text())["all"]["children"]
    config.write_text("# mine\n")
    again = run(["init", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert config.read_text() == "# mine\n"
    assert run(["init", "--dir", str(tmp_path), "--force"]).exit_code == 0
    assert config.read_text() == example_config()


def test_other_hlctl_env_vars_are_not_config_keys(tmp_path: Path) -> None:
    env = {"HLCTL_INVENTORY": "/x/hosts.yml", "HLCTL_ANSIBLE_DIR": "/x", "HLCTL_MODELS_DIR": "/m"}
    loaded = load_config(None, environ={**env, "XDG_CONFIG_HOME": str(tmp_path)})
    assert loaded.config.models_dir == Path("/m")
