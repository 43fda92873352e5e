"""The router section: validation with key paths, secrets never inline, documented keys."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from hlctl.config import describe_errors
from hlctl.router.config import RouterSettings


def _problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        RouterSettings.model_validate(data)
    return describe_errors(info.value)


def test_defaults_are_valid() -> None:
    settings = RouterSettings()
    assert settings.port == 8088
    assert set(settings.alias_table()) == {"local", "cloud", "auto"}


def test_inline_secret_is_refused_with_its_path() -> None:
    problems = _problems({"keys": [{"name": "me", "secret": "sk-inline"}]})
    assert problems == ["keys[0].secret: secrets are never written inline: "
                        "use {env: NAME} or {file: PATH}"]


def test_cloud_key_inline_is_refused() -> None:
    problems = _problems({"cloud": {"url": "https://x/v1", "api_key": "sk-1", "model": "m",
                                    "input_usd_per_1m": 1, "output_usd_per_1m": 2}})
    assert problems[0].startswith("cloud.api_key: secrets are never written inline")


@pytest.mark.parametrize(("data", "expected"), [
    ({"keys": [{"name": "a", "secret": {"env": "A"}}, {"name": "a", "secret": {"env": "B"}}]},
     "keys: key name 'a' is used twice"),
    ({"local": [{"name": "g", "url": "gpu01:8080"}]}, "local[0].url: String should match"),
    ({"aliases": {"auto": {"route": "local"}}}, "alias 'auto' is built in"),
    ({"default_alias": "nope"}, "default_alias 'nope' is not an alias"),
    ({"timeouts": {"first_chunk_s": 0}}, "timeouts.first_chunk_s: Input should be greater"),
    ({"rules": {"keywrds": ["x"]}}, "rules.keywrds: unknown key"),
    ({"keys": [{"name": "a", "secret": {"env": "A"}, "scope": "lan"}]}, "keys[0].scope:"),
])
def test_errors_name_the_key(data: dict[str, Any], expected: str) -> None:
    assert any(expected in p for p in _problems(data)), _problems(data)


def _fields_without_description(model: type[BaseModel], prefix: str = "") -> list[str]:
    missing = []
    for name, info in model.model_fields.items():
        if not info.description:
            missing.append(prefix + name)
        annotation = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) \
                    and candidate.__module__ == "hlctl.router.config":
                missing += _fields_without_description(candidate, f"{prefix}{name}.")
    return missing


def test_every_key_is_documented() -> None:
    assert _fields_without_description(RouterSettings) == []


def test_example_snippet_validates() -> None:
    from hlctl.templates import example_config

    data = yaml.safe_load(example_config())
    settings = RouterSettings.model_validate(data["router"])
    assert settings.cloud is not None and settings.cloud.api_key is not None
    assert settings.cloud.api_key.env
    assert any(k.scope == "local-only" for k in settings.keys)


def _missing_in_example(model: type[BaseModel], example: Any, prefix: str = "") -> list[str]:
    """Keys of ``model`` (recursively) that the example config's router block leaves out."""
    missing = []
    for name, info in model.model_fields.items():
        if not isinstance(example, dict) or name not in example:
            missing.append(prefix + name)
            continue
        value = example[name]
        annotation = info.annotation
        for candidate in (annotation, *getattr(annotation, "__args__", ())):
            if not (isinstance(candidate, type) and issubclass(candidate, BaseModel)
                    and candidate.__module__ == "hlctl.router.config"):
                continue
            # A list of entries or a table of named entries: the first one shows the keys.
            if isinstance(value, list) and value:
                value = value[0]
            elif getattr(annotation, "__origin__", None) is dict and isinstance(value, dict):
                value = next(iter(value.values()), None)
            missing += _missing_in_example(candidate, value, f"{prefix}{name}.")
    return missing


def test_every_key_is_in_the_example_config() -> None:
    from hlctl.templates import example_config

    example = yaml.safe_load(example_config())["router"]
    assert _missing_in_example(RouterSettings, example) == []
