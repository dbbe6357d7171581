"""Rich renderings of what the CLI reports: member profiles, import and seed reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from loyalty.members import MemberProfile


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M")


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:,.2f} {currency}"


def table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A compact table with ``headers`` and stringified ``rows``."""
    result = Table(title=title, title_justify="left", show_edge=False, header_style="bold")
    for header in headers:
        result.add_column(header)
    for row in rows:
        result.add_row(*("" if cell is None else str(cell) for cell in row))
    return result


def print_profile(console: Console, profile: MemberProfile) -> None:
    """Print a member's profile and histories."""
    m = profile.member
    console.print(table(f"Member {m.external_id} (id {m.id})", ["field", "value"], [
        ("name", f"{m.first_name} {m.last_name}".strip()), ("email", m.email), ("phone", m.phone),
        ("locale", m.locale), ("time zone", m.time_zone), ("tier", m.tier),
        ("points", f"{m.points_balance:,} (ledger sum {profile.ledger_total:,})"),
        ("joined", _when(m.joined_at)), ("last purchase", _when(m.last_purchase_at)),
        ("birthday", m.birthday),
    ]))
    console.print(table("Consent", ["channel", "opted in", "source", "recorded"],
                        [(c.channel, "yes" if c.opted_in else "no", c.source, _when(c.recorded_at))
                         for c in profile.consents]))
    console.print(table("Points ledger (latest)", ["when", "kind", "points", "reason", "source"],
                        [(_when(e.created_at), e.kind, f"{e.points:+,}", e.reason, e.source)
                         for e in profile.ledger]))
    console.print(table("Purchases (latest)", ["when", "amount", "category", "channel"],
                        [(_when(t.occurred_at), _money(t.amount_cents, t.currency), t.category, t.channel)
                         for t in profile.transactions]))
    console.print(table("Tier changes", ["when", "from", "to", "qualifying", "messaged"],
                        [(_when(c.changed_at), c.from_tier, c.to_tier, f"{c.qualifying_value:,}",
                          _when(c.handled_at) or "not yet") for c in profile.tier_changes]))
    console.print(table("Messages (latest)", ["created", "channel", "template", "status", "detail"],
                        [(_when(o.created_at), o.channel, o.template, o.status, o.skip_reason or o.last_error)
                         for o in profile.messages]))
    if profile.push_subscriptions:
        console.print(f"{len(profile.push_subscriptions)} push subscription(s)")


def print_import_report(console: Console, report: Any) -> None:
    """Print an import's counts and where the rejects went."""
    extra = [(name, getattr(report, name)) for name in ("points", "tier_changes") if hasattr(report, name)]
    rows = [("read", report.read), ("loaded", report.loaded), ("unchanged", report.unchanged),
            ("rejected", report.rejected), *extra,
            ("rows/s", f"{report.read / max(report.elapsed_s, 1e-9):,.0f}")]
    console.print(table(f"Import of {report.source}", ["", "count"],
                        [(k, f"{v:,}" if isinstance(v, int) else v) for k, v in rows]))
    if report.rejects_path is not None:
        console.print(f"[yellow]{report.rejected:,} rejected rows, with line numbers and reasons, in "
                      f"{report.rejects_path}[/]")


def print_seed_report(console: Console, report: Any) -> None:
    """Print what the seeder created."""
    counts = [(name, f"{getattr(report, name):,}") for name in
              ("members", "transactions", "points_entries", "consents", "push_subscriptions", "assigned",
               "holdout", "survey_responses")]
    console.print(table(f"Seeded programme ({report.elapsed_s:.1f} s)", ["", "rows"], counts))
    console.print(table("Members by tier", ["tier", "members"],
                        [(tier, f"{n:,}") for tier, n in report.tier_counts.items()]))
    console.print(f"past campaign [bold]{report.campaign}[/] with its true effects in {report.truth_path}")
