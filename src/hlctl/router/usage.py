"""`hlctl usage` core: read the ledger for a period and tell local against cloud in money."""

from __future__ import annotations

import re
import sqlite3
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from hlctl.errors import UsageError
from hlctl.router.ledger import LedgerError
from hlctl.router.pricing import CloudPrices, Usage, cloud_cost

GroupBy = Literal["route", "model", "key"]
_GROUP_COLUMN = {"route": "route", "model": "model", "key": "key_name"}
_SINCE = re.compile(r"^(\d+)([hdw])$")


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime
    label: str


def parse_period(month: str | None, since: str | None, now: datetime) -> Period:
    """``--month 2024-02`` or ``--since 7d`` (h, d, w); neither: the current month."""
    if month and since:
        raise UsageError("give --month or --since, not both")
    now = now.astimezone(UTC)
    if since:
        match = _SINCE.match(since.strip())
        if not match or int(match.group(1)) == 0:
            raise UsageError(f"--since {since!r}: use a count and a unit, e.g. 12h, 7d, 4w")
        count, unit = int(match.group(1)), match.group(2)
        delta = {"h": timedelta(hours=count), "d": timedelta(days=count),
                 "w": timedelta(weeks=count)}[unit]
        return Period(now - delta, now, f"last {since}")
    if month:
        try:
            start = datetime.strptime(month, "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise UsageError(f"--month {month!r}: use YYYY-MM, e.g. 2024-02") from None
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return Period(start, end, start.strftime("%Y-%m"))


@dataclass(frozen=True)
class Aggregate:
    group: str
    route: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def read_aggregates(db_path: Path, period: Period, by: GroupBy) -> list[Aggregate]:
    """Sums per group and route; a missing ledger is an empty one (nothing served yet)."""
    if not db_path.exists():
        return []
    column = _GROUP_COLUMN[by]
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
        try:
            rows = db.execute(
                f"SELECT COALESCE({column}, ''), route, COUNT(*), SUM(prompt_tokens), "
                "SUM(completion_tokens), SUM(cost_usd) FROM requests "
                "WHERE ts >= ? AND ts < ? GROUP BY 1, 2 ORDER BY 1, 2",
                (period.start.timestamp(), period.end.timestamp())).fetchall()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {db_path}: {exc}") from None
    return [Aggregate(str(g), str(r), int(n), int(p or 0), int(c or 0), float(u or 0))
            for g, r, n, p, c, u in rows]


@dataclass(frozen=True)
class RouteTotals:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, a: Aggregate) -> RouteTotals:
        return RouteTotals(self.requests + a.requests, self.prompt_tokens + a.prompt_tokens,
                           self.completion_tokens + a.completion_tokens,
                           self.cost_usd + a.cost_usd)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tokens": self.tokens}


@dataclass(frozen=True)
class UsageReport:
    period: Period
    by: GroupBy
    groups: list[Aggregate]
    local: RouteTotals
    cloud: RouteTotals
    other_requests: int  # answered by the router itself (errors), no tokens
    all_cloud_cost_usd: float | None  # None when no cloud price table is configured

    @property
    def saving_usd(self) -> float | None:
        if self.all_cloud_cost_usd is None:
            return None
        return self.all_cloud_cost_usd - self.local.cost_usd - self.cloud.cost_usd

    def to_json(self, ledger: Path) -> dict[str, Any]:
        return {
            "period": {"label": self.period.label, "start": self.period.start.isoformat(),
                       "end": self.period.end.isoformat()},
            "by": self.by,
            "groups": [{**asdict(g), "tokens": g.tokens} for g in self.groups],
            "local": self.local.as_dict(),
            "cloud": self.cloud.as_dict(),
            "other_requests": self.other_requests,
            "total_tokens": self.local.tokens + self.cloud.tokens,
            "total_cost_usd": self.local.cost_usd + self.cloud.cost_usd,
            "all_cloud_cost_usd": self.all_cloud_cost_usd,
            "saving_usd": self.saving_usd,
            "ledger": str(ledger),
        }


def summarize(aggregates: list[Aggregate], period: Period, by: GroupBy,
              prices: CloudPrices | None) -> UsageReport:
    """Totals local against cloud, and the local tokens priced at the cloud's table."""
    local, cloud, other = RouteTotals(), RouteTotals(), 0
    for a in aggregates:
        if a.route == "local":
            local = local.add(a)
        elif a.route == "cloud":
            cloud = cloud.add(a)
        else:
            other += a.requests
    all_cloud = None
    if prices is not None:
        all_cloud = cloud.cost_usd + cloud_cost(
            Usage(local.prompt_tokens, local.completion_tokens), prices)
    return UsageReport(period, by, aggregates, local, cloud, other, all_cloud)


def human_tokens(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1_000:
        return f"{n / 1_000:.0f}K"
    return str(n)


def story(report: UsageReport) -> str:
    """'2.1M tokens: 1.8M local for $15.00 of electricity, 300K cloud for $9.00; ...'"""
    total = report.local.tokens + report.cloud.tokens
    line = (f"{human_tokens(total)} tokens: {human_tokens(report.local.tokens)} local for "
            f"${report.local.cost_usd:,.2f} of electricity, {human_tokens(report.cloud.tokens)}"
            f" cloud for ${report.cloud.cost_usd:,.2f}")
    if report.all_cloud_cost_usd is not None and report.saving_usd is not None:
        saving = report.saving_usd
        line += (f"; all-cloud would have been ${report.all_cloud_cost_usd:,.2f} "
                 + (f"(saved ${saving:,.2f})" if saving >= 0
                    else f"(local cost ${-saving:,.2f} more)"))
    return line
