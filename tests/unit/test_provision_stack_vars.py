"""The router container's secrets: revealed on the controller, referenced by container path."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from hlctl.errors import ConfigError
from hlctl.provision.stack_vars import stack_vars

LAB = {
    "models_dir": "/srv/models",
    "router": {
        "keys": [{"name": "alice", "secret": {"env": "ROUTER_KEY_ALICE"}, "scope": "full"}],
        "local": [{"name": "gpu", "url": "http://llama-server:8080"}],
        "cloud": {"url": "https://api.openai.com/v1", "model": "gpt-4o-mini",
                  "api_key": {"file": "/home/me/.openai"}, "input_usd_per_1m": 0.15,
                  "output_usd_per_1m": 0.6},
    },
}


def _reveal(values: dict[str, str]) -> Any:
    def reveal(ref: Mapping[str, Any], where: str) -> str:
        return values[ref.get("env") or ref["file"]]
    return reveal


def test_secrets_move_to_compose_secret_paths() -> None:
    out = stack_vars(LAB, _reveal({"ROUTER_KEY_ALICE": "sk-alice", "/home/me/.openai": "sk-oa"}))
    router = out.host_lab_config["router"]
    assert router["cloud"]["api_key"] == {"file": "/run/secrets/cloud_api_key"}
    assert router["keys"][0]["secret"] == {"file": "/run/secrets/router_key"}
    assert sorted(out.secret_files, key=lambda f: f["name"]) == [
        {"name": "cloud_api_key", "content": "sk-oa"},
        {"name": "router_key", "content": "sk-alice"}]
    # The caller's mapping is untouched (it is also the controller's own config).
    assert LAB["router"]["cloud"]["api_key"] == {"file": "/home/me/.openai"}
    assert "sk-" not in repr(out.host_lab_config)


def test_no_router_section_means_no_secrets() -> None:
    out = stack_vars({"models_dir": "/srv/models"}, _reveal({}))
    assert out.host_lab_config == {"models_dir": "/srv/models"} and out.secret_files == []


def test_more_router_keys_than_compose_carries_is_refused() -> None:
    lab = {"router": {"keys": [{"name": "a", "secret": {"env": "A"}},
                               {"name": "b", "secret": {"env": "B"}}]}}
    with pytest.raises(ConfigError, match=r"router\.keys: compose\.yaml gives the router"):
        stack_vars(lab, _reveal({"A": "x", "B": "y"}))


def test_llama_server_api_key_is_refused_for_the_stack() -> None:
    lab = {"router": {"local": [{"name": "gpu", "url": "http://x:1", "api_key": {"env": "K"}}]}}
    with pytest.raises(ConfigError, match=r"router.local\[0\].api_key"):
        stack_vars(lab, _reveal({"K": "k"}))
