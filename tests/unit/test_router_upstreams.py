"""Backend choice and health state: least busy healthy backend, down after failures."""

from __future__ import annotations

from hlctl.router.config import RouterSettings
from hlctl.router.upstreams import UpstreamPool


def pool(**extra: object) -> UpstreamPool:
    settings = RouterSettings.model_validate({
        "local": [{"name": "a", "url": "http://a:8080"}, {"name": "b", "url": "http://b:8080",
                                                          "api_key": {"env": "B_KEY"}}],
        "cloud": {"url": "https://c/v1", "api_key": {"env": "C_KEY"}, "model": "m",
                  "input_usd_per_1m": 1, "output_usd_per_1m": 1}, **extra})
    return UpstreamPool(settings, {"B_KEY": "b-secret", "C_KEY": "c-secret"})


def test_least_busy_healthy_backend_is_picked() -> None:
    p = pool()
    a, b = p.local
    a.in_flight, b.in_flight = 3, 1
    assert p.pick_local() is b
    b.set_state("down")
    assert p.pick_local() is a
    a.set_state("starting")  # llama-server's 503 while loading: not routable
    assert p.pick_local() is None and not p.local_up()


def test_failures_mark_down_and_success_brings_back() -> None:
    p = pool(failures_to_mark_down=2)
    a = p.local[0]
    p.report_failure(a, "connect")
    assert a.routable
    p.report_failure(a, "connect")
    assert a.state == "down" and not a.routable
    p.report_success(a)
    assert a.state == "up" and a.failures == 0


def test_keys_go_in_headers_and_never_in_reprs() -> None:
    p = pool()
    assert p.local[1].headers == {"Authorization": "Bearer b-secret"}
    assert p.cloud is not None and p.cloud.headers["Authorization"] == "Bearer c-secret"
    assert "secret" not in repr(p.local[1]) and "secret" not in repr(p.cloud)
    assert "secret" not in str(p.describe())
    assert p.local[0].base == "http://a:8080/v1" and p.local[0].health_url == "http://a:8080/health"
