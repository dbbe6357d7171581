"""Benchmark: dispatcher throughput per channel next to a bare-adapter floor, and rate holding.

    .venv/bin/python bench/dispatch.py [--emails 10000] [--personal 3000] [--sms 2000] [--push 2000] [--repeats 5]

Everything runs against :class:`channels.emulator.ProviderEmulator` on loopback, no faults, in
this process (so the emulator's request handling shares the GIL with the sender, in the floor
and the dispatcher alike).

Throughput, per channel (email through SendGrid, sms through Twilio, push through FCM), each
repeat in a fresh migrated SQLite file (WAL) in a temporary folder, floor and dispatcher
alternating which goes first:

* dispatcher: N messages queued with :func:`loyalty.outbox.enqueue` (not timed), then
  ``ChannelDispatcher(paced=False, policy=None).run(until_idle=True)`` timed with
  ``perf_counter``: claims, sends and result recording included. Emails all share one
  subject/html/text, so SendGrid takes them 1000 personalizations per request (claim size 1000);
  the ``email*`` row is personalised campaign email (a subject and body per member, as campaign runs
  render them), one request per message, ``SendGridAdapter.max_concurrent_requests`` in flight;
* floor: the same adapter's ``send_batch`` in a bare loop over pre-built ``OutgoingMessage``s,
  in the dispatcher's own ``chunk_size``; no database.

Prints the medians (msg/s) and ratio dispatcher/floor; target >= 0.80.

Rate holding, paced (``paced=True``, ``rate_per_second``): email at 200/s and SMS at 50
segments/s (half 1-segment, half 2-segment bodies), ~6 s each. From the emulator's
``accepted_at`` stamps: the average rate = units / (last - first) must be within +-5% of the
configured rate, and no one-second window [t, t+1) starting at any event may hold more units
than the rate. SMS units are the emulator's ``num_segments``.

Exit code 0 when every line passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from channels.base import ChannelAdapter, Outcome, OutgoingMessage  # noqa: E402
from channels.email_sendgrid import SendGridAdapter  # noqa: E402
from channels.emulator import ProviderEmulator  # noqa: E402
from channels.emulator_push import make_fcm_service_account  # noqa: E402
from channels.push_fcm import FcmAdapter  # noqa: E402
from channels.sms_twilio import TwilioSmsAdapter  # noqa: E402
from loyalty.db import create_db_engine, session_scope, upgrade  # noqa: E402
from loyalty.dispatch import ChannelDispatcher  # noqa: E402
from loyalty.models import MEMBERS  # noqa: E402
from loyalty.outbox import NewMessage, enqueue  # noqa: E402
from loyalty.programme import load_programme, sync_catalogue  # noqa: E402
from loyalty.settings import DispatchSettings  # noqa: E402
from loyalty.types import utcnow  # noqa: E402

RATIO_TARGET = 0.80
RATE_TOLERANCE = 0.05
RATE_SECONDS = 6
# SMS at 50 segments/s: a toll-free or short-code sender (a long code does 1/s).
EMAIL_RATE, SMS_RATE = 200.0, 50.0
MEMBERS_COUNT = 1000
SETTINGS = DispatchSettings(claim_size=1000)  # one claim fills one SendGrid request of 1000 personalizations
EMAIL = {"subject": "Double points this weekend", "html": "<p>Double points on every purchase.</p>",
         "text": "Double points on every purchase."}
# A campaign email's body is a few kB of inlined-CSS HTML.
PERSONAL_HTML = ('<table><tr><td style="padding:12px;font-family:Arial,sans-serif;color:#333">Double points on every '
                 'purchase this weekend. <a href="https://shop.example.com/?utm_source=loyalflow">Shop now</a>'
                 '</td></tr></table>') * 12
SHORT_SMS = "Loyalflow: your code is {n}. Show it at the till."  # 1 segment
LONG_SMS = "Loyalflow {n}: " + "double points this weekend on every purchase in store and online. " * 3  # 2


def channel_of(kind: str) -> str:
    """The channel of a measured kind (``email*`` is personalised email)."""
    return kind.rstrip("*")


def content_for(kind: str, n: int) -> tuple[str, dict[str, Any]]:
    """Address and content of message ``n``: shared or personalised email, mixed SMS lengths, distinct push."""
    if kind == "email":
        return f"member{n}@example.com", EMAIL
    if kind == "email*":
        html = f"<p>Hi member {n}, your {n * 7} points are waiting.</p>" + PERSONAL_HTML
        return f"member{n}@example.com", {"subject": f"Member {n}, we saved you an offer", "html": html,
                                          "text": f"Hi member {n}, your {n * 7} points are waiting."}
    if kind == "sms":
        return f"+1416555{n % 10_000:04d}", {"body": (SHORT_SMS if n % 2 == 0 else LONG_SMS).format(n=n)}
    return f"fcm-token-{n:08d}", {"title": "Double points", "body": f"Offer {n} is waiting for you"}


def fresh_engine(path: Path, kind: str, count: int) -> sa.Engine:
    """A migrated SQLite file with the catalogue, members, and ``count`` pending messages of ``kind``."""
    channel = channel_of(kind)
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    with session_scope(engine) as session:
        sync_catalogue(session, load_programme(REPO / "config"))
        session.execute(MEMBERS.insert(), [
            {"external_id": f"B{i:06d}", "first_name": "B", "last_name": str(i), "email": f"b{i}@example.com",
             "phone": f"+1416{i:07d}", "locale": "en_CA", "time_zone": "America/Toronto", "tier": "member",
             "joined_at": utcnow()} for i in range(MEMBERS_COUNT)])
        ids: list[int] = list(session.execute(sa.select(MEMBERS.c.id)).scalars())
        messages = []
        for n in range(count):
            to, content = content_for(kind, n)
            messages.append(NewMessage(key=f"bench-{channel}-{n}", member_id=ids[n % len(ids)], channel=channel,
                                       template="bench", payload={"to": to, "content": content}))
        enqueue(session, messages)
    return engine


def chunk_size(adapter: ChannelAdapter, *, paced: bool = False) -> int:
    """The dispatcher's own chunk size for ``adapter`` (its constructor touches no database)."""
    return ChannelDispatcher(sa.create_engine("sqlite://"), adapter, settings=SETTINGS, paced=paced).chunk_size


def floor_rate(adapter: ChannelAdapter, kind: str, count: int) -> float:
    """Messages/s of ``send_batch`` alone over pre-built messages, in the dispatcher's chunk size."""
    messages = []
    for n in range(count):
        to, content = content_for(kind, n)
        messages.append(OutgoingMessage(message_id=n + 1, key=f"floor-{n}", channel=adapter.channel, to=to,
                                        content=content, tags={"outbox_id": str(n + 1)}))
    size, accepted = chunk_size(adapter), 0
    started = time.perf_counter()
    for start in range(0, count, size):
        results = adapter.send_batch(messages[start : start + size])
        accepted += sum(r.outcome == Outcome.ACCEPTED for r in results)
    elapsed = time.perf_counter() - started
    assert accepted == count, f"floor: {accepted} of {count} accepted"
    return count / elapsed


def dispatcher_rate(path: Path, adapter: ChannelAdapter, kind: str, count: int) -> float:
    """Messages/s of an unpaced dispatcher draining ``count`` queued messages (wall time of ``run``)."""
    engine = fresh_engine(path, kind, count)
    dispatcher = ChannelDispatcher(engine, adapter, settings=SETTINGS, paced=False)
    started = time.perf_counter()
    stats = dispatcher.run(until_idle=True, poll_seconds=0.05)
    elapsed = time.perf_counter() - started
    engine.dispose()
    assert stats.sent == count, f"dispatcher: {stats.as_dict()}"
    return count / elapsed


@dataclass
class Throughput:
    channel: str
    floor: float
    dispatcher: float

    @property
    def ratio(self) -> float:
        return self.dispatcher / self.floor

    @property
    def passed(self) -> bool:
        return self.ratio >= RATIO_TARGET


def throughput(folder: Path, emu: ProviderEmulator, adapter: ChannelAdapter, kind: str, count: int,
               repeats: int) -> Throughput:
    """Median floor and dispatcher rates over ``repeats``, alternating which runs first."""
    adapter.send_batch([OutgoingMessage(0, "warm-up", adapter.channel, *content_for(kind, 0))])
    floors: list[float] = []
    dispatched: list[float] = []
    for repeat in range(repeats):
        path = folder / f"{adapter.channel}-{len(kind)}-{repeat}.db"
        order: list[tuple[list[float], Callable[[], float]]] = [
            (floors, partial(floor_rate, adapter, kind, count)),
            (dispatched, partial(dispatcher_rate, path, adapter, kind, count))]
        for results, measure in order if repeat % 2 == 0 else reversed(order):
            results.append(measure())
            emu.reset()  # forget what was recorded: memory, and nothing else depends on it
        print(f"  {kind:<6} run {repeat + 1}: floor {floors[-1]:>9,.0f} msg/s, "
              f"dispatcher {dispatched[-1]:>9,.0f} msg/s")
    return Throughput(kind, statistics.median(floors), statistics.median(dispatched))


@dataclass
class RateHolding:
    channel: str
    configured: float
    achieved: float
    max_window: float
    units: float

    @property
    def deviation(self) -> float:
        return self.achieved / self.configured - 1

    @property
    def passed(self) -> bool:
        return abs(self.deviation) <= RATE_TOLERANCE and self.max_window <= self.configured


def window_stats(events: list[tuple[float, float]]) -> tuple[float, float, float]:
    """(total units, units / (last - first), most units in any [t, t+1) starting at an event)."""
    events.sort()
    times = [t for t, _ in events]
    prefix = [0.0, *itertools.accumulate(u for _, u in events)]
    busiest = max(prefix[bisect.bisect_left(times, t + 1)] - prefix[bisect.bisect_left(times, t)] for t in times)
    span = times[-1] - times[0]
    return prefix[-1], prefix[-1] / span if span > 0 else float("inf"), busiest


def rate_holding(path: Path, emu: ProviderEmulator, adapter: ChannelAdapter, rate: float, count: int) -> RateHolding:
    """Run a paced dispatcher at ``rate`` and judge it from the emulator's acceptance times."""
    engine = fresh_engine(path, adapter.channel, count)
    emu.reset()
    dispatcher = ChannelDispatcher(engine, adapter, settings=SETTINGS, rate_per_second=rate, paced=True)
    stats = dispatcher.run(until_idle=True, poll_seconds=0.05)
    engine.dispose()
    assert stats.sent == count, f"paced dispatcher: {stats.as_dict()}"
    events = ([(e.accepted_at, 1.0) for e in emu.emails] if adapter.channel == "email"
              else [(s.accepted_at, float(s.num_segments)) for s in emu.sms])
    units, achieved, busiest = window_stats(events)
    print(f"  {adapter.channel:<5} paced: {count:,} messages, {units:,.0f} units, chunks of "
          f"{dispatcher.chunk_size}")
    return RateHolding(adapter.channel, rate, achieved, busiest, units)


def make_adapters(emu: ProviderEmulator) -> dict[str, ChannelAdapter]:
    """One adapter per channel, pointed at the emulator."""
    return {
        "email": SendGridAdapter("SG.bench-key", host=emu.url, from_email="offers@loyalflow.example", timeout=30,
                                 rate_per_second=EMAIL_RATE),
        "sms": TwilioSmsAdapter(ProviderEmulator.TWILIO_ACCOUNT_SID, ProviderEmulator.TWILIO_AUTH_TOKEN,
                                base_url=emu.url, from_number="+15005550006", timeout=30, rate_per_second=SMS_RATE),
        "push": FcmAdapter(make_fcm_service_account(emu), fcm_url=emu.url, timeout=30),
    }


def report(rows: list[Throughput], holds: list[RateHolding], repeats: int) -> bool:
    """Print both tables; True when everything passes."""
    print(f"\nThroughput, unpaced, medians of {repeats} (target dispatcher/floor >= {RATIO_TARGET:.2f})")
    print(f"{'channel':<8}{'floor msg/s':>13}{'dispatcher msg/s':>18}{'ratio':>8}  verdict")
    for row in rows:
        print(f"{row.channel:<8}{row.floor:>13,.0f}{row.dispatcher:>18,.0f}{row.ratio:>8.2f}  "
              f"{'PASS' if row.passed else 'FAIL'}")
    print(f"\nRate holding, paced (average within ±{RATE_TOLERANCE:.0%}, no 1 s window over the rate)")
    print(f"{'channel':<8}{'configured/s':>13}{'achieved/s':>12}{'deviation':>11}{'max in 1 s':>12}  verdict")
    for hold in holds:
        print(f"{hold.channel:<8}{hold.configured:>13,.1f}{hold.achieved:>12,.1f}{hold.deviation:>+11.1%}"
              f"{hold.max_window:>12,.0f}  {'PASS' if hold.passed else 'FAIL'}")
    ok = all(r.passed for r in rows) and all(h.passed for h in holds)
    print(f"\n{'ALL PASS' if ok else 'SOME FAIL'}")
    return ok


def main() -> None:
    """Parse arguments, measure, print, exit 0 when everything passes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emails", type=int, default=10_000)
    parser.add_argument("--personal", type=int, default=3_000, help="personalised emails (one request each)")
    parser.add_argument("--sms", type=int, default=2_000)
    parser.add_argument("--push", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    counts = {"email": args.emails, "email*": args.personal, "sms": args.sms, "push": args.push}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="loyalflow-bench-") as tmp, ProviderEmulator(seed=1) as emu:
        folder, adapters = Path(tmp), make_adapters(emu)
        try:
            rows = [throughput(folder, emu, adapters[channel_of(k)], k, n, args.repeats)
                    for k, n in counts.items() if n > 0]
            # SMS: half 1-segment, half 2-segment bodies, 1.5 segments a message on average.
            holds = [rate_holding(folder / "paced-email.db", emu, adapters["email"], EMAIL_RATE,
                                  int(EMAIL_RATE * RATE_SECONDS)),
                     rate_holding(folder / "paced-sms.db", emu, adapters["sms"], SMS_RATE,
                                  int(SMS_RATE * RATE_SECONDS / 1.5))]
        finally:
            for adapter in adapters.values():
                adapter.close()
    ok = report(rows, holds, args.repeats)
    print(f"total {time.perf_counter() - started:.1f} s")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
