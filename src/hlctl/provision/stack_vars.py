"""What `hlctl provision` hands the hosts for the router container: its secrets and its config.

The router runs in a container that sees neither the controller's environment nor its files:
the controller reveals the router's secrets (cloud key, router key) here, they travel to the
llm_stack role in a 0600 extra-vars file (never in argv or logs) and land as the compose
secrets ``/run/secrets/<name>``; the hosts' lab config refers to them by those paths. Pure:
``reveal`` is the edge that reads env vars and files.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hlctl.errors import ConfigError

# compose.yaml's secrets; compose mounts each at /run/secrets/<name> in the router container.
CONTAINER_SECRETS_DIR = "/run/secrets"
CLOUD_KEY = "cloud_api_key"
ROUTER_KEY = "router_key"


@dataclass(frozen=True)
class StackVars:
    host_lab_config: dict[str, Any]  # secret references rewritten to container paths
    secret_files: list[dict[str, str]]  # [{name, content}] for llm_stack_secrets


def stack_vars(lab_config: Mapping[str, Any],
               reveal: Callable[[Mapping[str, Any], str], str] | None) -> StackVars:
    """Rewrite the router's secret references to compose secrets and collect their values.

    ``reveal(ref, key_path)`` returns the secret a ``{env: ...}``/``{file: ...}`` mapping names;
    None rewrites the references only (a run that does not start the stack needs no values).
    """
    config = copy.deepcopy(dict(lab_config))
    router = config.get("router")
    if not isinstance(router, dict):
        return StackVars(config, [])
    files: list[dict[str, str]] = []

    def move(holder: dict[str, Any], key: str, name: str, where: str) -> None:
        ref = holder.get(key)
        if not isinstance(ref, Mapping):
            return
        if reveal is not None:
            files.append({"name": name, "content": reveal(ref, where)})
        holder[key] = {"file": f"{CONTAINER_SECRETS_DIR}/{name}"}

    cloud = router.get("cloud")
    if isinstance(cloud, dict):
        move(cloud, "api_key", CLOUD_KEY, "router.cloud.api_key")
    keys = router.get("keys") or []
    if isinstance(keys, list) and len(keys) > 1:
        raise ConfigError(
            f"router.keys: compose.yaml gives the router container one key ({ROUTER_KEY}); "
            f"this lab config has {len(keys)}",
            hint="keep one key per host, or add secrets to compose.override.yaml and run "
                 "the llm_stack role yourself")
    if keys and isinstance(keys[0], dict):
        move(keys[0], "secret", ROUTER_KEY, "router.keys[0].secret")
    for index, backend in enumerate(router.get("local") or []):
        if isinstance(backend, dict) and backend.get("api_key") is not None:
            raise ConfigError(f"router.local[{index}].api_key: the stack's llama-server "
                              "runs on an internal network without --api-key",
                              hint="remove api_key for backends that `hlctl up` runs")
    return StackVars(config, files)
