"""Ledger, `hlctl usage` and `hlctl economics`: real SQLite files, the real CLI root."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner

from hlctl.cli.main import cli
from hlctl.errors import UsageError
from hlctl.router.economics import EconomicsInput, compute
from hlctl.router.ledger import LEDGER_FILE, Ledger, LedgerRow
from hlctl.router.pricing import CloudPrices, EnergyPrice, Timings, Usage, cost
from hlctl.router.usage import Aggregate, parse_period, story, summarize

NOW = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)


def row(ts: datetime, route: str, prompt: int, completion: int, usd: float,
        key: str = "alice", model: str = "gemma") -> LedgerRow:
    return LedgerRow(ts=ts.timestamp(), key_name=key, alias="auto", route=route,
                     reason="default-local", upstream="gpu01", model=model,
                     prompt_tokens=prompt, completion_tokens=completion, latency_ms=12.0,
                     ttft_ms=None, status=200, cost_usd=usd, stream=False, private=False)


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"""
state_dir: {tmp_path / 'state'}
router:
  cloud: {{url: "https://c.example/v1", api_key: {{env: K}}, model: m,
          input_usd_per_1m: 3, output_usd_per_1m: 15}}
""")
    ledger = Ledger(tmp_path / "state" / LEDGER_FILE, flush_s=0.05, clock=lambda: NOW)
    ledger.open()
    feb = datetime(2024, 2, 14, tzinfo=UTC)
    ledger.record(row(feb, "local", 1_500_000, 300_000, 15.0))
    ledger.record(row(feb, "cloud", 200_000, 100_000, 2.1, key="bob", model="m"))
    ledger.record(row(feb, "none", 0, 0, 0.0))
    ledger.record(row(datetime(2024, 3, 2, tzinfo=UTC), "local", 10, 10, 0.001))
    ledger.close()
    return config


def run(config: Path, *args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    monkeypatch.setitem(cli.lazy, "usage", ("hlctl.cli.usage:usage", "usage"))  # type: ignore[attr-defined]
    monkeypatch.setitem(cli.lazy, "economics",  # type: ignore[attr-defined]
                        ("hlctl.cli.economics:economics", "economics"))
    result = CliRunner().invoke(cli, ["--config", str(config), *args])
    return result.exit_code, result.stdout, result.stderr


def test_period_parsing() -> None:
    month = parse_period("2024-02", None, NOW)
    assert (month.start, month.end) == (datetime(2024, 2, 1, tzinfo=UTC),
                                        datetime(2024, 3, 1, tzinfo=UTC))
    assert parse_period(None, None, NOW).label == "2024-03"
    assert parse_period("2023-12", None, NOW).end == datetime(2024, 1, 1, tzinfo=UTC)
    week = parse_period(None, "7d", NOW)
    assert (NOW - week.start).days == 7
    for bad in (("2024-13", None), (None, "7 days"), (None, "0d"), ("2024-02", "7d")):
        with pytest.raises(UsageError):
            parse_period(*bad, NOW)


def test_summary_and_story() -> None:
    aggregates = [Aggregate("local", "local", 100, 1_500_000, 300_000, 15.0),
                  Aggregate("cloud", "cloud", 10, 200_000, 100_000, 9.0)]
    report = summarize(aggregates, parse_period("2024-02", None, NOW), "route",
                       CloudPrices(30, 30))
    assert report.all_cloud_cost_usd == pytest.approx(9.0 + 1.8 * 30)
    assert report.saving_usd == pytest.approx(63.0 - 24.0)
    assert story(report) == ("2.1M tokens: 1.8M local for $15.00 of electricity, 300K cloud "
                             "for $9.00; all-cloud would have been $63.00 (saved $39.00)")
    dear = summarize(aggregates, report.period, "route", CloudPrices(3, 15))
    assert dear.saving_usd == pytest.approx(18.0 - 24.0)
    assert story(dear).endswith("all-cloud would have been $18.00 (local cost $6.00 more)")
    assert summarize(aggregates, report.period, "route", None).saving_usd is None


def test_usage_json_for_a_month(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(lab, "usage", "--month", "2024-02", "--json", monkeypatch=monkeypatch)
    assert code == 0
    data = json.loads(out)
    assert data["local"]["tokens"] == 1_800_000 and data["cloud"]["tokens"] == 300_000
    assert data["other_requests"] == 1
    assert data["all_cloud_cost_usd"] == pytest.approx(2.1 + 4.5 + 4.5)
    assert data["saving_usd"] == pytest.approx(11.1 - 17.1)


def test_usage_by_key_table(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(lab, "usage", "--month", "2024-02", "--by", "key",
                       monkeypatch=monkeypatch)
    assert code == 0
    assert "bob" in out and "alice" in out and "all-cloud would have been $11.10" in out


def test_usage_bad_month_is_one_line(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = run(lab, "usage", "--month", "March", monkeypatch=monkeypatch)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == ["error: --month 'March': use YYYY-MM, e.g. 2024-02"]


def test_usage_without_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hlctl.yaml"
    config.write_text(f"state_dir: {tmp_path / 'nothing'}\n")
    code, out, _ = run(config, "usage", "--json", monkeypatch=monkeypatch)
    assert code == 0 and json.loads(out)["total_tokens"] == 0
    assert not (tmp_path / "nothing").exists(), "reading usage must not create the ledger"


def test_ledger_is_wal_and_budget_counts_this_month(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    ledger = Ledger(path, flush_s=0.05, clock=lambda: NOW)
    ledger.open()
    ledger.record(row(NOW, "cloud", 1, 1, 4.0))
    ledger.record(row(datetime(2024, 2, 1, tzinfo=UTC), "cloud", 1, 1, 100.0))
    assert ledger.budget(5.0).spent_usd == 4.0 and not ledger.budget(5.0).exhausted
    ledger.close()
    again = Ledger(path, clock=lambda: NOW)
    again.open()
    assert again.budget(4.0).exhausted  # the month's spend is read back at start
    again.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 2


def test_cost_functions() -> None:
    energy = EnergyPrice(watts=300, usd_per_kwh=0.2)
    # 300 W for one hour at $0.20/kWh is $0.06, whatever the tokens.
    assert cost("local", Usage(10, 10), Timings(1_800_000, 1_800_000), 1.0, None,
                energy) == pytest.approx(0.06)
    assert cost("local", Usage(), None, 3_600_000, None, energy) == pytest.approx(0.06)
    assert cost("cloud", Usage(1_000_000, 1_000_000), None, 1, CloudPrices(3, 15),
                energy) == pytest.approx(18.0)
    assert cost("none", Usage(5, 5), None, 1, CloudPrices(3, 15), energy) == 0.0


def test_economics_matches_the_issue() -> None:
    result = compute(EconomicsInput(1500, 3, 350, 8, 0.12, 3, 15, 5_000_000, 0.75))
    assert round(result.hardware_usd_month) == 42
    assert round(result.energy_usd_month) == 10
    assert result.cloud_usd_per_1m == pytest.approx(6.0)
    assert result.break_even_tokens_month == pytest.approx(result.local_usd_month / 6 * 1e6)
    assert result.cheaper == "cloud"


def test_economics_cli(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = run(lab, "economics", "--json", monkeypatch=monkeypatch)
    assert code == 0
    data = json.loads(out)
    assert round(data["hardware_usd_month"]) == 42 and round(data["energy_usd_month"]) == 10
    assert data["input"]["input_usd_per_1m"] == 3
    code, out, _ = run(lab, "economics", "--tokens", "100000000", monkeypatch=monkeypatch)
    assert code == 0 and "the local is cheaper" in out


def test_economics_without_cloud_prices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "hlctl.yaml"
    config.write_text("router: {}\n")
    code, _, err = run(config, "economics", monkeypatch=monkeypatch)
    assert code == 2 and "give --input-price" in err


def test_budget_starts_again_each_month(tmp_path: Path) -> None:
    clock = {"now": datetime(2026, 12, 31, 23, 59, tzinfo=UTC)}
    ledger = Ledger(tmp_path / LEDGER_FILE, clock=lambda: clock["now"])
    ledger.record(row(clock["now"], "cloud", 1, 1, 4.0))
    assert ledger.budget(5.0).spent_usd == 4.0
    clock["now"] = datetime(2027, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert ledger.budget(5.0).spent_usd == 0.0
    ledger.record(row(clock["now"], "cloud", 1, 1, 2.0))
    assert ledger.budget(5.0).spent_usd == 2.0
