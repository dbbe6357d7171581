"""Benchmark: members imported per second, next to a raw ``executemany`` floor.

    .venv/bin/python bench/import_members.py [--rows 200000] [--repeat 3] [--parallel auto|on|off]

Generates a realistic members CSV (fr_CA/en_CA/en_US/fr_FR members with their local phone
formats, emails, birthdays, time zones, consents, ~1% bad rows) in a temporary folder, then
for each repeat:

* import: :func:`loyalty.importing.import_members` into a fresh migrated SQLite file (WAL);
* re-import: the same file again into that database (idempotent: nothing changes);
* floor: the same good rows, already validated and converted, inserted with a raw
  ``sqlite3`` ``executemany`` into a fresh database migrated the same way, in one
  transaction: no CSV parsing, no validation, no upsert.

Prints the median rows/s of each, the ratio import/floor, and whether the import reaches
the target of 50,000 rows/s.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a script from anywhere

from loyalty.csv_rows import MemberContext, MemberRow, validated_chunks  # noqa: E402
from loyalty.db import create_db_engine, session_scope, upgrade  # noqa: E402
from loyalty.importing import import_members  # noqa: E402
from loyalty.programme import load_programme, sync_catalogue  # noqa: E402

TARGET = 50_000
HEADER = ["external_id", "first_name", "last_name", "email", "phone", "locale", "time_zone", "joined_at",
          "birthday", "email_opt_in", "sms_opt_in"]
FIRST = ["Jean", "Marie", "Émilie", "François", "Chloé", "Olivier", "Sophie", "Mathieu", "Noémie", "Gabriel",
         "Emma", "Liam", "Olivia", "Noah", "Ava", "William", "Charlotte", "Lucas", "Zoé", "Benjamin",
         "Hélène", "Louis", "Camille", "Thomas", "Léa", "Ethan", "Mia", "Jacob", "Alice", "Raphaël"]
LAST = ["Tremblay", "Gagnon", "Roy", "Côté", "Bouchard", "Gauthier", "Morin", "Lavoie", "Fortin", "Gagné",
        "Smith", "Brown", "Wilson", "MacDonald", "Taylor", "Campbell", "Anderson", "Martin", "Lee", "Nguyen",
        "Dubois", "Lefebvre", "Moreau", "Laurent", "Girard", "Bélanger", "O'Neil", "Singh", "Patel", "Chen"]
DOMAINS = ["gmail.com", "videotron.ca", "hotmail.com", "outlook.com", "yahoo.ca", "bell.net", "sympatico.ca",
           "icloud.com", "orange.fr", "free.fr", "Gmail.com", "Videotron.CA", "yahoo.fr", "shaw.ca", "live.ca"]
AREAS = {"fr_CA": ["514", "438", "450", "418", "819", "581"], "en_CA": ["416", "647", "905", "613", "604", "403"],
         "en_US": ["212", "646", "718", "415", "312", "617"]}
ZONES = {"fr_CA": ["America/Toronto", ""], "en_CA": ["America/Toronto", "America/Vancouver", "America/Edmonton",
                                                   "America/Halifax", "America/Winnipeg", ""],
         "en_US": ["America/New_York", "America/Chicago", "America/Los_Angeles"], "fr_FR": ["Europe/Paris"]}
LOCALES = ["fr_CA"] * 40 + ["en_CA"] * 40 + ["en_US"] * 10 + ["fr_FR"] * 10
BAD = [("email", "jean.tremblay.gmail.com"), ("email", "jean@@gmail.com"), ("phone", "555-01"),
       ("time_zone", "Mars/Olympus"), ("birthday", "2099-01-01"), ("locale", "french"), ("email_opt_in", "maybe"),
       ("joined_at", "yesterday")]


def ascii_fold(text: str) -> str:
    """Jérôme O'Neil -> jeromeoneil, as people's email addresses usually are."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(c for c in folded if c.isalnum()).lower()


def phone_for(rng: random.Random, locale: str) -> str:
    """A number in a format people type for that locale."""
    if locale == "fr_FR":
        prefix = rng.choice(["6" + rng.choice("012345678"), "7" + rng.choice("345678")]) if rng.random() < 0.8 \
            else rng.choice("12345") + rng.choice("0123456789")  # mobile ranges in use, or a fixed line
        digits = prefix + "".join(rng.choices("0123456789", k=7))
        pairs = " ".join(digits[i:i + 2] for i in range(1, 9, 2))
        return f"0{digits[0]} {pairs}" if rng.random() < 0.7 else f"+33 {digits[0]} {pairs}"
    area, exchange, line = rng.choice(AREAS[locale]), str(rng.randint(200, 999)), f"{rng.randint(0, 9999):04d}"
    formats = [f"({area}) {exchange}-{line}", f"{area}-{exchange}-{line}", f"+1 {area} {exchange} {line}",
               f"{area}{exchange}{line}", f"1-{area}-{exchange}-{line}", f"{area}.{exchange}.{line}"]
    return rng.choice(formats)


def member_row(rng: random.Random, index: int) -> list[str]:
    """One realistic row (about 1% of them with one bad field, and a few repeated ids)."""
    locale = rng.choice(LOCALES)
    first, last = rng.choice(FIRST), rng.choice(LAST)
    email = f"{ascii_fold(first)}.{ascii_fold(last)}{rng.randint(1, 9999)}@{rng.choice(DOMAINS)}" \
        if rng.random() < 0.92 else ""
    phone = phone_for(rng, locale) if rng.random() < 0.85 else ""
    joined = datetime(2015, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randint(0, 10 * 365 * 86400))
    joined_text = joined.date().isoformat() if rng.random() < 0.5 else joined.strftime("%Y-%m-%dT%H:%M:%S")
    birthday = (date(1940, 1, 1) + timedelta(days=rng.randint(0, 66 * 365))).isoformat() if rng.random() < 0.7 else ""
    row = [f"CRM-{index:08d}", first, last, email, phone, locale, rng.choice(ZONES[locale]), joined_text, birthday,
           rng.choice(["true", "false", "yes", ""]), rng.choice(["true", "false", "", ""])]
    if rng.random() < 0.01:
        column, value = rng.choice(BAD)
        row[HEADER.index(column)] = value
    elif rng.random() < 0.001:
        row[0] = f"CRM-{max(0, index - rng.randint(1, 1000)):08d}"  # a repeated id
    return row


def write_members_csv(path: Path, rows: int, seed: int = 7) -> None:
    """Write ``rows`` members to ``path``, streaming."""
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        writer.writerows(member_row(rng, i) for i in range(rows))


def fresh_database(path: Path) -> str:
    """A migrated SQLite database with the catalogue synced; returns its URL."""
    url = f"sqlite:///{path}"
    engine = create_db_engine(url)
    upgrade(engine)
    with session_scope(engine) as session:
        sync_catalogue(session, load_programme(REPO / "config"))
    engine.dispose()
    return url


@dataclass
class Run:
    imported: float
    reimported: float
    floor: float
    read: int
    rejected: int
    cpu_main_us: float  # CPU per row of the import, in this process
    cpu_helper_us: float  # and in the helper process that validates (0 when there is none)


def run_once(folder: Path, source: Path, repeat: int, parallel: bool | None) -> Run:
    """Import, re-import, then the floor, each into a fresh database."""
    engine = create_db_engine(fresh_database(folder / f"import-{repeat}.db"))
    main_cpu, helper_cpu = time.process_time(), _children_cpu()
    first = import_members(engine, source, entry_tier="member", parallel=parallel)
    main_cpu, helper_cpu = time.process_time() - main_cpu, _children_cpu() - helper_cpu
    again = import_members(engine, source, entry_tier="member", parallel=parallel)
    assert again.loaded == 0 and again.unchanged == first.loaded + first.unchanged, "re-import changed rows"
    engine.dispose()
    floor = floor_rows_per_s(folder / f"floor-{repeat}.db", source)
    return Run(first.rows_per_s, again.rows_per_s, floor, first.read, first.rejected,
               main_cpu / first.read * 1e6, helper_cpu / first.read * 1e6)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def floor_tuples(source: Path) -> Iterator[tuple[object, ...]]:
    """The file's good rows, validated and converted to what SQLite stores (not timed)."""
    now = datetime.now(UTC)
    stamp = now.replace(tzinfo=None).isoformat(" ", "microseconds")
    for chunk in validated_chunks(source, "members", MemberContext.at(now), 5000):
        for row in chunk.rows:
            row_: MemberRow = row
            joined = (row_[7] or now).replace(tzinfo=None).isoformat(" ", "microseconds")
            birthday = row_[8].isoformat() if row_[8] else None
            yield (*row_[:7], "member", 0, joined, birthday, stamp, stamp)


def floor_rows_per_s(path: Path, source: Path) -> float:
    """Raw sqlite3 executemany of already-validated tuples into the same members table."""
    fresh_database(path)
    rows = list(floor_tuples(source))
    connection = sqlite3.connect(path, isolation_level=None)
    for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
        connection.execute(f"PRAGMA {pragma}")
    columns = "external_id, first_name, last_name, email, phone, locale, time_zone, tier, points_balance, " \
              "joined_at, birthday, created_at, updated_at"
    started = time.perf_counter()
    connection.execute("BEGIN")
    connection.executemany(f"INSERT INTO members ({columns}) VALUES ({', '.join('?' * 13)})", rows)
    connection.execute("COMMIT")
    elapsed = time.perf_counter() - started
    connection.close()
    return len(rows) / elapsed


def main() -> None:
    """Parse arguments, generate the file, run, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--parallel", choices=["auto", "on", "off"], default="auto",
                        help="validate in a second process (auto: when the file is big and a CPU is spare)")
    args = parser.parse_args()
    parallel = {"auto": None, "on": True, "off": False}[args.parallel]
    with tempfile.TemporaryDirectory(prefix="loyalflow-bench-") as tmp:
        folder = Path(tmp)
        source = folder / "members.csv"
        started = time.perf_counter()
        write_members_csv(source, args.rows)
        print(f"generated {args.rows:,} members ({source.stat().st_size / 1e6:.1f} MB) "
              f"in {time.perf_counter() - started:.1f} s")
        runs = []
        for repeat in range(args.repeat):
            run = run_once(folder, source, repeat, parallel)
            runs.append(run)
            print(f"  run {repeat + 1}: import {run.imported:,.0f} rows/s, re-import {run.reimported:,.0f} rows/s, "
                  f"floor {run.floor:,.0f} rows/s ({run.rejected:,} of {run.read:,} rows rejected; CPU per row: "
                  f"{run.cpu_main_us:.1f} µs here, {run.cpu_helper_us:.1f} µs in the helper; "
                  f"load average {os.getloadavg()[0]:.2f})")
    report([r.imported for r in runs], [r.reimported for r in runs], [r.floor for r in runs])


def report(imported: list[float], reimported: list[float], floor: list[float]) -> None:
    """Print the medians and the verdict."""
    median_import, median_floor = statistics.median(imported), statistics.median(floor)
    print(f"import_members     {median_import:>10,.0f} rows/s (median of {len(imported)})")
    print(f"re-import (no-op)  {statistics.median(reimported):>10,.0f} rows/s")
    print(f"raw executemany    {median_floor:>10,.0f} rows/s (floor: no parsing, no validation)")
    print(f"import / floor     {median_import / median_floor:>10.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS           {peak:>10,.0f} MB (this process, the floor's 200k rows included)")
    print(f"target ≥ {TARGET:,} rows/s: {'PASS' if median_import >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
