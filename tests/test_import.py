"""CSV import of members and transactions: rejects, idempotence, round trips, on every backend."""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import phonenumbers
import pytest
import sqlalchemy as sa
from email_validator import validate_email
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Engine

from loyalty.csv_rows import Chunk, amount_cents
from loyalty.import_pipeline import CONSENT_PARAMS, MEMBER_PARAMS, MemberEncoder, in_background
from loyalty.import_writers import CodecMismatch, check_codec
from loyalty.importing import ImportFileError, default_rejects_path, import_members, import_transactions
from loyalty.models import CHANNEL_CONSENTS, MEMBERS, POINTS_ENTRIES, TRANSACTIONS
from loyalty.programme import Programme

MEMBER_HEADER = ["external_id", "first_name", "last_name", "email", "phone", "locale", "time_zone", "joined_at",
                 "birthday", "email_opt_in", "sms_opt_in"]
TXN_HEADER = ["external_id", "member_external_id", "amount", "currency", "category", "channel", "occurred_at"]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]], *, bom: bool = False,
              newline: str = "\r\n") -> Path:
    """A CSV file as people send them (optionally with a BOM and CRLF line endings)."""
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator=newline)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def read_rejects(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def members(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every member row by external id."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(MEMBERS)).mappings().all()
    return {row["external_id"]: dict(row) for row in rows}


def consents(engine: Engine) -> dict[tuple[str, str], tuple[bool, str]]:
    query = sa.select(MEMBERS.c.external_id, CHANNEL_CONSENTS.c.channel, CHANNEL_CONSENTS.c.opted_in,
                      CHANNEL_CONSENTS.c.source).join(MEMBERS, MEMBERS.c.id == CHANNEL_CONSENTS.c.member_id)
    with engine.connect() as connection:
        return {(ext, str(channel)): (bool(opted), src) for ext, channel, opted, src in connection.execute(query)}


# The good rows of the mixed file, and what they must become.
GOOD = [
    ["C1", "Émilie", "Tremblay", "Emilie.Tremblay@Videotron.CA", "(514) 555-0134", "fr_CA", "", "2020-03-01",
     "1985-04-12", "yes", "no"],
    ["C2", "Liam", "Smith", "", "+1 416 555 0199", "en_CA", "America/Vancouver", "2021-06-01T10:30:00-04:00",
     "", "", "true"],
    ["C3", "Chloé", "Moreau", "chloe@orange.fr", "06 12 34 56 78", "fr_FR", "Europe/Paris", "", "", "1", ""],
    ["C4", "Noah", "Lee", "noah@example.com", "", "", "", "", "", "", ""],
]
BAD = [  # (row, the field its reason must name)
    (["B1", "Jean", "Roy", "jean.roy.videotron.ca", "", "fr_CA", "", "", "", "", ""], "email"),
    (["B2", "Jean", "Roy", "", "555-01", "fr_CA", "", "", "", "", ""], "phone"),
    (["B3", "Jean", "Roy", "", "", "fr_CA", "Mars/Olympus", "", "", "", ""], "time_zone"),
    (["B4", "Jean", "Roy", "", "", "french", "", "", "", "", ""], "locale"),
    (["B5", "Jean", "Roy", "", "", "", "", "", "2999-01-01", "", ""], "birthday"),
    (["B6", "Jean", "Roy", "", "", "", "", "yesterday", "", "", ""], "joined_at"),
    (["B7", "Jean", "Roy", "", "", "", "", "", "", "maybe", ""], "email_opt_in"),
    (["", "Jean", "Roy", "", "", "", "", "", "", "", ""], "external_id"),
    (["B8", "Anne\nMarie", "Roy", "", "", "", "", "", "", "", ""], "first_name"),  # two physical lines
    (["B9", "Jean", "Roy", "", ""], "expected 11 fields"),
    (["C1", "Again", "Twice", "", "", "", "", "", "", "", ""], "duplicate external_id in file (first seen on line 2)"),
]


def physical_lines(row: Sequence[str]) -> int:
    """How many lines a row takes in the file (quoted values may hold line breaks)."""
    return 1 + sum(len(re.findall(r"\r\n|\r|\n", value)) for value in row)


def mixed_file(tmp_path: Path) -> tuple[Path, dict[tuple[str, str], int]]:
    """GOOD and BAD rows interleaved; returns the file and the line of each row (by id and first name)."""
    rows: list[list[str]] = []
    for i, (bad, _) in enumerate(BAD):
        rows += [GOOD[i], bad] if i < len(GOOD) else [bad]
    lines = dict(zip(((row[0], row[1]) for row in rows),
                     itertools.accumulate([2, *map(physical_lines, rows)]), strict=False))
    return write_csv(tmp_path / "members.csv", MEMBER_HEADER, rows, newline="\n"), lines


def test_mixed_file_loads_good_rows_and_reports_each_bad_one(engine: Engine, tmp_path: Path) -> None:
    source, lines = mixed_file(tmp_path)
    report = import_members(engine, source, entry_tier="member")

    assert (report.read, report.loaded, report.unchanged, report.rejected) == (len(GOOD) + len(BAD), 4, 0, len(BAD))
    assert report.rejects_path == default_rejects_path(source) == tmp_path / "members.csv.rejects.csv"
    rejects = read_rejects(report.rejects_path)
    assert [int(r["line"]) for r in rejects] == sorted(int(r["line"]) for r in rejects)
    by_row = {(r["external_id"], r["first_name"]): r for r in rejects}
    for row, field in BAD:
        reject = by_row[(row[0], row[1])]
        assert int(reject["line"]) == lines[(row[0], row[1])]
        assert reject["reason"].startswith(field), reject
        assert [reject[c] for c in MEMBER_HEADER[:len(row)]] == row  # the row as it was read

    stored = members(engine)
    assert set(stored) == {"C1", "C2", "C3", "C4"}
    assert stored["C1"]["email"] == "Emilie.Tremblay@videotron.ca"
    assert [stored[k]["phone"] for k in ("C1", "C2", "C3", "C4")] == ["+15145550134", "+14165550199",
                                                                     "+33612345678", None]
    assert stored["C1"]["time_zone"] == "America/Toronto" and stored["C4"]["locale"] == "en_CA"
    assert stored["C1"]["joined_at"] == datetime(2020, 3, 1, tzinfo=UTC)
    assert stored["C2"]["joined_at"] == datetime(2021, 6, 1, 14, 30, tzinfo=UTC)
    assert stored["C1"]["birthday"] == date(1985, 4, 12)
    assert {row["tier"] for row in stored.values()} == {"member"}
    assert consents(engine) == {("C1", "email"): (True, "import"), ("C1", "sms"): (False, "import"),
                                ("C2", "sms"): (True, "import"), ("C3", "email"): (True, "import")}
    assert report.consents_changed == 4


def test_reimporting_the_same_file_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    source, _ = mixed_file(tmp_path)
    first = import_members(engine, source, entry_tier="member")
    before = members(engine), consents(engine)
    again = import_members(engine, source, entry_tier="member")
    assert (again.read, again.loaded, again.unchanged, again.rejected) == (first.read, 0, first.loaded,
                                                                          first.rejected)
    assert again.consents_changed == 0
    assert (members(engine), consents(engine)) == before  # updated_at included


def test_a_changed_email_updates_only_that_member(engine: Engine, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "m.csv", MEMBER_HEADER, GOOD)
    import_members(engine, source, entry_tier="member")
    with engine.begin() as connection:  # the programme moved C2 on meanwhile: an import must not undo it
        connection.execute(MEMBERS.update().where(MEMBERS.c.external_id == "C2").values(tier="gold",
                                                                                         points_balance=0))
    before = members(engine)
    changed = [list(row) for row in GOOD]
    changed[1][3] = "Liam.Smith@Example.COM"
    report = import_members(engine, write_csv(tmp_path / "m2.csv", MEMBER_HEADER, changed), entry_tier="silver")
    after = members(engine)
    assert (report.loaded, report.unchanged) == (1, 3)
    assert after["C2"]["email"] == "Liam.Smith@example.com"
    assert after["C2"]["updated_at"] > before["C2"]["updated_at"]
    assert (after["C2"]["tier"], after["C2"]["points_balance"]) == ("gold", 0)
    assert {k: v for k, v in after.items() if k != "C2"} == {k: v for k, v in before.items() if k != "C2"}


def test_an_empty_joined_at_keeps_the_stored_one(engine: Engine, tmp_path: Path) -> None:
    row = ["J1", "Ann", "Lee", "", "", "", "", "2019-01-02T03:04:05", "", "", ""]
    import_members(engine, write_csv(tmp_path / "a.csv", MEMBER_HEADER, [row]), entry_tier="member")
    blank = import_members(engine, write_csv(tmp_path / "b.csv", MEMBER_HEADER, [[*row[:7], "", *row[8:]]]),
                           entry_tier="member")
    moved_row = [*row[:7], "2018-01-01", *row[8:]]
    moved = import_members(engine, write_csv(tmp_path / "c.csv", MEMBER_HEADER, [moved_row]), entry_tier="member")
    assert (blank.loaded, blank.unchanged, moved.loaded) == (0, 1, 1)
    assert members(engine)["J1"]["joined_at"].replace(tzinfo=UTC) == datetime(2018, 1, 1, tzinfo=UTC)


def test_an_import_never_regrants_a_consent_withdrawn_elsewhere(engine: Engine, tmp_path: Path) -> None:
    row = ["K1", "Ann", "Lee", "ann@example.com", "", "", "", "", "", "yes", ""]
    import_members(engine, write_csv(tmp_path / "a.csv", MEMBER_HEADER, [row]), entry_tier="member")
    with engine.begin() as connection:  # the member unsubscribed from the preference centre
        connection.execute(CHANNEL_CONSENTS.update().values(opted_in=False, source="preferences"))
    import_members(engine, write_csv(tmp_path / "b.csv", MEMBER_HEADER, [row]), entry_tier="member")
    assert consents(engine) == {("K1", "email"): (False, "preferences")}
    row[9] = "no"
    with engine.begin() as connection:
        connection.execute(CHANNEL_CONSENTS.update().values(opted_in=True))
    import_members(engine, write_csv(tmp_path / "c.csv", MEMBER_HEADER, [row]), entry_tier="member")
    assert consents(engine) == {("K1", "email"): (False, "import")}  # withdrawing always applies


def test_bom_crlf_any_column_order_and_case(engine: Engine, tmp_path: Path) -> None:
    header = ["Email", " EXTERNAL_ID ", "phone", "locale"]
    rows = [["a@example.com", "D1", "514 555 0134", "fr_CA"], ["nope", "D2", "", ""], ["b@example.com", "D3", "", ""]]
    source = write_csv(tmp_path / "crlf.csv", header, rows, bom=True, newline="\r\n")
    report = import_members(engine, source, entry_tier="member")
    assert (report.loaded, report.rejected) == (2, 1)
    # The rejects keep the file's own header, so they can be fixed and imported again as they are.
    assert [(r["line"], r[" EXTERNAL_ID "]) for r in read_rejects(default_rejects_path(source))] == [("3", "D2")]
    assert members(engine)["D1"]["phone"] == "+15145550134"


@pytest.mark.parametrize(("header", "named"), [
    (["first_name", "email"], ["missing required column(s): external_id"]),
    (["external_id", "favourite_colour", "Shoe Size"], ["'favourite_colour'", "'shoe size'"]),
    (["external_id", "email", "EMAIL"], ["repeated column(s): email"]),
])
def test_bad_headers_stop_the_import_before_anything_loads(engine: Engine, tmp_path: Path, header: list[str],
                                                           named: list[str]) -> None:
    source = write_csv(tmp_path / "bad.csv", header, [["X1"] * len(header)])
    with pytest.raises(ImportFileError) as caught:
        import_members(engine, source, entry_tier="member")
    assert str(source) in str(caught.value)
    for name in named:
        assert name in str(caught.value)
    assert members(engine) == {}
    assert not default_rejects_path(source).exists()


def test_an_empty_file_is_refused(engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "empty.csv"
    source.write_text("")
    with pytest.raises(ImportFileError, match="header row"):
        import_members(engine, source, entry_tier="member")


@pytest.mark.parametrize("parallel", [False, True])
def test_each_chunk_is_committed_on_its_own(engine: Engine, tmp_path: Path, parallel: bool) -> None:
    """An import stopped midway keeps the chunks it wrote; running it again completes it."""
    source = write_csv(tmp_path / "m.csv", MEMBER_HEADER, GOOD)
    done: list[int] = []

    class Crash(Exception):
        pass

    def stop_after_two(n: int) -> None:
        done.append(n)
        if sum(done) >= 2:
            raise Crash

    with pytest.raises(Crash):
        import_members(engine, source, entry_tier="member", chunk_size=1, progress=stop_after_two, parallel=parallel)
    assert set(members(engine)) == {"C1", "C2"}
    report = import_members(engine, source, entry_tier="member", chunk_size=1, progress=done.append)
    assert (report.loaded, report.unchanged, sum(done)) == (2, 2, 2 + 4)


def test_a_clean_import_removes_the_previous_rejects_file(engine: Engine, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "m.csv", MEMBER_HEADER, [*GOOD, BAD[0][0]])
    assert import_members(engine, source, entry_tier="member").rejects_path is not None
    write_csv(source, MEMBER_HEADER, GOOD)
    report = import_members(engine, source, entry_tier="member")
    assert report.rejects_path is None and not default_rejects_path(source).exists()


def test_validating_in_a_helper_process_gives_the_same_result(engine: Engine, tmp_path: Path) -> None:
    source, _ = mixed_file(tmp_path)
    report = import_members(engine, source, entry_tier="member", parallel=True, chunk_size=3)
    assert (report.loaded, report.rejected) == (4, len(BAD))
    again = import_members(engine, source, entry_tier="member", parallel=False)
    assert (again.loaded, again.unchanged) == (0, 4)


def test_undecodable_bytes_and_unreadable_rows_are_rejected_not_fatal(engine: Engine, tmp_path: Path) -> None:
    source = tmp_path / "legacy.csv"
    source.write_bytes(b"external_id,first_name\nE1,Jos\xe9\nE2," + b"y" * 140_000 + b"\nE3,Ok\n")
    report = import_members(engine, source, entry_tier="member")
    assert (report.read, report.loaded, report.rejected) == (3, 1, 2)
    assert report.rejects_path is not None
    rejects = report.rejects_path.read_bytes()
    assert b"2,first_name: is not valid UTF-8,E1,Jos\xe9" in rejects  # the row's bytes, as they were
    assert b"3,csv: field larger than field limit" in rejects
    assert set(members(engine)) == {"E3"}


def test_the_helper_process_streams_items_and_raises_its_errors() -> None:
    assert list(in_background(zip, [1, 2], ["a", "b"])) == [(1, "a"), (2, "b")]
    with pytest.raises(TypeError, match="not iterable"):
        list(in_background(iter, 5))


def test_the_encoder_follows_the_statements_parameter_order() -> None:
    row = ("X1", "Ann", "Lee", None, None, "en_CA", "UTC", datetime(2020, 1, 1, tzinfo=UTC), date(1990, 1, 2),
           True, None)
    chunk = Chunk(rows=[row], read=1)
    straight = MemberEncoder(MEMBER_PARAMS, CONSENT_PARAMS, "sqlite").encode(chunk)
    flipped = MemberEncoder(MEMBER_PARAMS[::-1], CONSENT_PARAMS[::-1], "sqlite").encode(chunk)
    stamp = "2020-01-01 00:00:00.000000"
    assert straight.members == [("X1", "Ann", "Lee", None, None, "en_CA", "UTC", stamp, "1990-01-02", stamp, stamp)]
    assert straight.consents == [("email", 1, "X1")]
    assert flipped.members == [straight.members[0][::-1]]
    assert flipped.consents == [straight.consents[0][::-1]]


def test_a_codec_that_disagrees_with_sqlalchemy_is_refused() -> None:
    check_codec("sqlite", sqlite.dialect())
    with pytest.raises(CodecMismatch, match="SQLAlchemy binds"):
        check_codec("native", sqlite.dialect())


# ------------------------------------------------------------------------------- fuzzing

_examples = itertools.count()
FIELD_VALUES = {
    "external_id": st.one_of(st.sampled_from(["a", "b", "c", " d "]), st.text(max_size=4), st.just("x" * 65)),
    "first_name": st.one_of(st.text(max_size=12), st.sampled_from(["Zoé", "O'Neil", " Jean ", "x" * 101])),
    "last_name": st.text(max_size=8),
    "email": st.one_of(st.just(""), st.emails().map(str), st.text(max_size=15),
                       st.sampled_from(["A@B.CA", "a@b.test", "info@Example.com", "a@@b.ca", "é@exemple.fr"])),
    "phone": st.one_of(st.just(""), st.text("0123456789 +-().", max_size=18),
                       st.sampled_from(["(514) 555-0134", "+33 6 12 34 56 78", "06 12 34 56 78", "+1 212 555 0100"])),
    "locale": st.sampled_from(["", "fr_CA", "en_CA", "en_US", "fr_FR", "en_GB", "fr", "FR_ca"]),
    "time_zone": st.sampled_from(["", "America/Toronto", "Europe/Paris", "UTC", "america/toronto", "Nowhere/X"]),
    "joined_at": st.one_of(st.just(""), st.dates(date(1990, 1, 1), date(2100, 1, 1)).map(date.isoformat),
                           st.datetimes(datetime(1990, 1, 1)).map(datetime.isoformat), st.text(max_size=6)),
    "birthday": st.one_of(st.just(""), st.dates(date(1900, 1, 1), date(2100, 1, 1)).map(date.isoformat),
                          st.text(max_size=6)),
    "email_opt_in": st.sampled_from(["", "yes", "No", "TRUE", "0", "maybe"]),
    "sms_opt_in": st.sampled_from(["", "1", "false", "y"]),
}
member_rows = st.lists(st.tuples(*(FIELD_VALUES[name] for name in MEMBER_HEADER)).map(list), min_size=1,
                       max_size=12)


def expected_member(row: list[str]) -> dict[str, Any]:
    """What a loaded row must look like, computed with the reference libraries."""
    ext, first, last, email, phone, locale, zone, joined, birthday = (v.strip() for v in row[:9])
    locale = locale or "en_CA"
    number = phonenumbers.parse(phone, locale[3:]) if phone else None
    stamp = datetime.fromisoformat(joined) if joined else None
    return {
        "external_id": ext, "first_name": first, "last_name": last,
        "email": validate_email(email, check_deliverability=False).normalized if email else None,
        "phone": phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if number else None,
        "locale": locale, "time_zone": zone or "America/Toronto",
        "birthday": date.fromisoformat(birthday) if birthday else None,
        **({} if stamp is None else {"joined_at": stamp.replace(tzinfo=UTC) if stamp.tzinfo is None
                                     else stamp.astimezone(UTC)}),
    }


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=member_rows)
def test_fuzzed_rows_are_loaded_or_rejected_and_loaded_rows_round_trip(engine: Engine, tmp_path: Path,
                                                                       rows: list[list[str]]) -> None:
    prefix = f"F{next(_examples)}-"  # examples share the database: keep their members apart
    rows = [[prefix + row[0] if row[0].strip() else row[0], *row[1:]] for row in rows]
    source = write_csv(tmp_path / "fuzz.csv", MEMBER_HEADER, rows)
    report = import_members(engine, source, entry_tier="member")

    assert report.read == len(rows)
    assert report.loaded + report.unchanged + report.rejected == report.read
    rejected = {int(r["line"]): r["reason"] for r in read_rejects(report.rejects_path)} if report.rejects_path else {}
    assert len(rejected) == report.rejected and all(rejected.values())
    stored = members(engine)
    for line, row in zip(itertools.accumulate([2, *map(physical_lines, rows)]), rows, strict=False):
        if line not in rejected:
            want = expected_member(row)
            got = stored[want["external_id"]]
            assert {key: got[key] for key in want} == want


# --------------------------------------------------------------------------- transactions


@pytest.mark.parametrize(("raw", "cents"), [("12.5", 1250), ("12.50", 1250), ("-3.2", -320), ("0.01", 1),
                                            ("100", 10000), ("+7.", 700), (".5", 50), ("1.230", 123)])
def test_amounts_become_exact_cents(raw: str, cents: int) -> None:
    assert amount_cents(raw) == cents


@pytest.mark.parametrize(("raw", "why"), [("1.234", "more than 2 decimal places"), ("abc", "not a decimal"),
                                          ("1e3", "not a decimal"), ("1,50", "not a decimal"),
                                          ("NaN", "not a decimal"), ("99999999999", "out of range")])
def test_bad_amounts_are_refused(raw: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        amount_cents(raw)


def transactions_fixture(engine: Engine, tmp_path: Path) -> Path:
    members_file = write_csv(tmp_path / "m.csv", MEMBER_HEADER, GOOD[:3])
    import_members(engine, members_file, entry_tier="member")
    past = (datetime.now(UTC) - timedelta(days=3)).replace(microsecond=0)
    when = past.isoformat()
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    rows = [
        ["T1", "C1", "12.5", "CAD", "pharmacy", "store", when],
        ["T2", "C1", "2000", "", "", "online", past.replace(tzinfo=None).isoformat()],
        ["T3", "C2", "40.00", "cad", "Beauty", "APP", when],
        ["T4", "C2", "-10.00", "", "beauty", "", when],
        ["T5", "C9", "5", "", "", "", when],  # unknown member
        ["T6", "C1", "1.234", "", "", "", when],
        ["T7", "C1", "abc", "", "", "", when],
        ["T8", "C1", "5", "USD", "", "", when],
        ["T9", "C1", "5", "", "", "kiosk", when],
        ["T10", "C1", "5", "", "", "", future],
        ["T11", "C1", "", "", "", "", ""],
        ["T1", "C1", "12.5", "", "", "", when],  # repeated transaction id
        ["T12", "C3", "0", "", "", "", when],
    ]
    return write_csv(tmp_path / "t.csv", TXN_HEADER, rows)


def test_transactions_credit_points_and_reject_bad_rows(engine: Engine, tmp_path: Path,
                                                        programme: Programme) -> None:
    source = transactions_fixture(engine, tmp_path)
    report = import_transactions(engine, source, programme=programme)
    assert (report.read, report.loaded, report.unchanged, report.rejected) == (13, 5, 0, 8)
    reasons = {r["external_id"]: (int(r["line"]), r["reason"]) for r in read_rejects(report.rejects_path)}
    assert reasons["T5"] == (6, "member_external_id: unknown member 'C9'")
    assert reasons["T6"][1] == "amount: '1.234' has more than 2 decimal places"
    assert reasons["T7"][1].startswith("amount: 'abc' is not a decimal number")
    assert reasons["T8"][1].startswith("currency: 'USD'")
    assert reasons["T9"][1].startswith("channel: 'kiosk'")
    assert reasons["T10"][1].startswith("occurred_at:") and "future" in reasons["T10"][1]
    assert reasons["T11"][1] == "amount: required; occurred_at: required"
    assert reasons["T1"] == (13, "duplicate external_id in file (first seen on line 2)")

    with engine.connect() as connection:
        amounts = dict(connection.execute(sa.select(TRANSACTIONS.c.external_id, TRANSACTIONS.c.amount_cents)).all())
        ledger = dict(connection.execute(sa.select(POINTS_ENTRIES.c.member_id, sa.func.sum(POINTS_ENTRIES.c.points))
                                         .group_by(POINTS_ENTRIES.c.member_id)).all())
        balances = dict(connection.execute(sa.select(MEMBERS.c.id, MEMBERS.c.points_balance)).all())
    assert amounts == {"T1": 1250, "T2": 200000, "T3": 4000, "T4": -1000, "T12": 0}
    assert report.points == sum(ledger.values()) > 0
    assert all(balances[member] == ledger.get(member, 0) for member in balances)
    assert report.tier_changes >= 1  # 2,000 dollars lifts C1 out of the entry tier
    assert members(engine)["C1"]["tier"] != "member"


def test_reimporting_transactions_credits_nothing_twice(engine: Engine, tmp_path: Path,
                                                       programme: Programme) -> None:
    source = transactions_fixture(engine, tmp_path)
    first = import_transactions(engine, source, programme=programme)
    balances = {k: v["points_balance"] for k, v in members(engine).items()}
    again = import_transactions(engine, source, programme=programme)
    assert (again.loaded, again.unchanged, again.rejected, again.points) == (0, first.loaded, first.rejected, 0)
    assert {k: v["points_balance"] for k, v in members(engine).items()} == balances


def test_transaction_files_need_their_columns(engine: Engine, tmp_path: Path, programme: Programme) -> None:
    source = write_csv(tmp_path / "t.csv", ["external_id", "amount"], [["T1", "5"]])
    with pytest.raises(ImportFileError, match="member_external_id, occurred_at"):
        import_transactions(engine, source, programme=programme)
