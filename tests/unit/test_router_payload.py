"""The body sent upstream: usage always asked for, the model set, the client's bytes kept."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hlctl.router.app import upstream_body

MESSAGES = [{"role": "user", "content": "h\u00e9llo \"quoted\" }"}]


def _send(body: dict[str, Any], model: str | None = None, *, include_usage: bool = False,
          raw: bytes | None = None) -> tuple[bytes, dict[str, Any]]:
    raw = raw if raw is not None else json.dumps(body).encode()
    out = upstream_body(body, raw, model, body.get("stream") is True, include_usage)
    return out, json.loads(out)


def test_streaming_gets_include_usage_spliced_into_the_clients_bytes() -> None:
    raw = b'{"model": "auto", "messages": [], "stream": true}  \n'
    out, sent = _send(json.loads(raw), raw=raw)
    assert out.startswith(b'{"model": "auto", "messages": [], "stream": true')
    assert sent == {"model": "auto", "messages": [], "stream": True,
                    "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}, {"other": 1}, "x"])
def test_existing_stream_options_are_merged_once(options: Any) -> None:
    body = {"model": "auto", "messages": MESSAGES, "stream": True, "stream_options": options}
    out, sent = _send(body)
    assert out.count(b'"stream_options"') == 1
    expected = {**(options if isinstance(options, dict) else {}), "include_usage": True}
    assert sent["stream_options"] == expected and sent["messages"] == MESSAGES


def test_client_asking_for_usage_and_non_streaming_are_sent_as_is() -> None:
    body = {"model": "auto", "messages": MESSAGES, "stream": True,
            "stream_options": {"include_usage": True}}
    raw = json.dumps(body).encode()
    assert upstream_body(body, raw, None, True, True) is raw
    plain = {"model": "auto", "messages": MESSAGES}
    raw = json.dumps(plain).encode()
    assert upstream_body(plain, raw, None, False, False) is raw


def test_model_is_replaced() -> None:
    _, sent = _send({"model": "auto", "messages": MESSAGES, "stream": True}, "gpt-x")
    assert sent["model"] == "gpt-x" and sent["stream_options"] == {"include_usage": True}


@given(st.dictionaries(st.text(max_size=5).filter(lambda k: k != "stream_options"),
                       st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                                    lambda c: st.lists(c, max_size=3)
                                    | st.dictionaries(st.text(max_size=3), c, max_size=3),
                                    max_leaves=8), max_size=5),
       st.sampled_from([{}, {"indent": 1}, {"separators": (",", ":")}]))
def test_splice_is_valid_json_for_any_body(extra: dict[str, Any],
                                           style: dict[str, Any]) -> None:
    body = {**extra, "stream": True}
    raw = json.dumps(body, **style).encode()
    sent = json.loads(upstream_body(body, raw, None, True, False))
    assert sent == {**body, "stream_options": {"include_usage": True}}
