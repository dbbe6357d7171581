"""Streaming, validated, idempotent CSV import of members and transactions.

Both files are UTF-8 CSV (a BOM and CRLF line endings are fine) with a header row naming
the columns, in any order and case. A missing required column or an unknown one stops the
import before anything is loaded (:class:`ImportFileError`). Every other problem is a
property of a row: the row goes to the rejects file, ``<file>.rejects.csv`` by default, as
``line,reason,<the row's columns as read>`` where ``line`` is the row's physical line in
the source (the header is line 1) and ``reason`` names each bad field, e.g. ``email: The
email address is not valid. It must have exactly one @-sign.``. Good rows are loaded.

Members (``loyalflow import members``)
    ``external_id`` (required, ≤ 64 characters, unique in the file: a later repeat is
    rejected), ``first_name``, ``last_name`` (≤ 100 each), ``email`` (normalised as
    email-validator does), ``phone`` (stored as E.164; without ``+country`` it is read in the
    region of the locale), ``locale`` (``ll_RR`` like fr_CA, default en_CA), ``time_zone``
    (IANA name, default America/Toronto), ``joined_at`` (ISO date or datetime, naive is UTC,
    not in the future; default: the time of the import), ``birthday`` (ISO date, not in the
    future), ``email_opt_in`` and ``sms_opt_in`` (true/false/yes/no/1/0 or empty).

    Upsert on ``external_id``: new members start in ``entry_tier``; known members get the
    file's profile fields, never a tier or balance change, and only rows whose values differ
    are written, so re-importing a file changes nothing (``updated_at`` included). An empty
    ``joined_at`` keeps the stored one. Opt-in columns upsert the member's email/SMS consent
    (source ``import``); an import can always withdraw a consent but never re-grants one
    that the member withdrew through another source.

Transactions (``loyalflow import transactions``)
    ``external_id`` (transaction id, required, unique in the file), ``member_external_id``
    (required, must be a known member), ``amount`` (currency units, e.g. 12.50, negative for
    refunds, at most 2 decimals), ``currency`` (default and only accepted value: the
    programme's), ``category`` (default general), ``channel`` (store/online/app, default
    store), ``occurred_at`` (required ISO datetime, naive is UTC, not in the future).
    Loaded through :func:`loyalty.ledger.record_purchases`: ids already stored are skipped.

Rows are read with the csv module a chunk at a time and each chunk is committed in its own
transaction, so memory stays flat (except a map of the external ids seen, for repeats) and a
crash leaves whole chunks behind, which a re-run skips or rewrites identically.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from loyalty.csv_rows import Chunk, ImportFileError, Reject, TransactionContext, file_layout, validated_chunks
from loyalty.db import fetch_rows
from loyalty.import_pipeline import encoded_in_background, encoded_members, wants_background
from loyalty.import_writers import MemberWriter, RejectsFile
from loyalty.models import MEMBERS
from loyalty.programme import Programme
from loyalty.types import utcnow

if TYPE_CHECKING:
    from loyalty.ledger import PurchaseBatch

__all__ = ["ImportFileError", "ImportReport", "TransactionImportReport", "import_members", "import_transactions"]

Progress = Callable[[int], None]


@dataclass
class ImportReport:
    """What an import did. ``read == loaded + unchanged + rejected``."""

    source: Path
    read: int = 0  # data rows read (blank lines aside)
    loaded: int = 0  # rows inserted or updated
    unchanged: int = 0  # good rows identical to what was stored
    rejected: int = 0
    rejects_path: Path | None = None  # None when nothing was rejected
    elapsed_s: float = 0.0
    consents_changed: int = 0  # members only: consent rows inserted or updated

    @property
    def rows_per_s(self) -> float:
        """Throughput over the whole import."""
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0


@dataclass
class TransactionImportReport(ImportReport):
    """An import of transactions; ``unchanged`` counts transaction ids already stored."""

    points: int = 0  # net points credited (refunds claw back)
    tier_changes: int = 0  # tier upgrades recorded


def default_rejects_path(source: Path) -> Path:
    """``FILE.csv`` → ``FILE.csv.rejects.csv``, next to the source."""
    return source.with_name(source.name + ".rejects.csv")


def import_members(engine: Engine, source: Path, *, entry_tier: str, rejects_path: Path | None = None,
                   chunk_size: int = 5000, progress: Progress | None = None,
                   parallel: bool | None = None) -> ImportReport:
    """Import or update members from ``source`` (format in the module docstring).

    ``parallel`` reads and validates in a helper process while this one writes (None: for
    a big file on a machine with a spare CPU). Raises :class:`ImportFileError` if the file
    cannot be imported at all; otherwise returns the counts, bad rows being in the rejects file.
    """
    _check_chunk_size(chunk_size)
    started = time.perf_counter()
    report = ImportReport(source)
    layout = file_layout(source, "members")
    now = utcnow()
    writer = MemberWriter(engine, entry_tier, now)
    args = (source, now, chunk_size, writer.encoder)
    chunks = encoded_in_background(*args) if wants_background(source, parallel) else encoded_members(*args)
    # closing(): on an error here, end the reader (and its helper process) at once.
    with RejectsFile(rejects_path or default_rejects_path(source), layout.header) as rejects, closing(chunks), \
            writer:
        for chunk in chunks:
            changed, consents = writer.write(chunk)
            _count(report, rejects, chunk.read, chunk.rejects, good=len(chunk.members), changed=changed)
            report.consents_changed += consents
            if progress is not None:
                progress(chunk.read)
    report.rejects_path = rejects.path if rejects.written else None
    report.elapsed_s = time.perf_counter() - started
    return report


def import_transactions(engine: Engine, source: Path, *, programme: Programme, rejects_path: Path | None = None,
                        chunk_size: int = 5000, progress: Progress | None = None) -> TransactionImportReport:
    """Import purchases from ``source``: credit points, record tier upgrades (format in the module docstring).

    Transaction ids already stored are counted as ``unchanged`` and credit nothing again.
    Raises :class:`ImportFileError` if the file cannot be imported at all.
    """
    _check_chunk_size(chunk_size)
    started = time.perf_counter()
    report = TransactionImportReport(source)
    layout = file_layout(source, "transactions")
    context = TransactionContext(now=utcnow(), currency=programme.currency)
    chunks = validated_chunks(source, "transactions", context, chunk_size)
    with RejectsFile(rejects_path or default_rejects_path(source), layout.header) as rejects, closing(chunks):
        for chunk in chunks:
            recorded, batch = _record_chunk(engine, programme, chunk)
            _count(report, rejects, chunk.read, chunk.rejects, good=recorded, changed=batch.inserted)
            report.points += batch.points
            report.tier_changes += len(batch.tier_changes)
            if progress is not None:
                progress(chunk.read)
    report.rejects_path = rejects.path if rejects.written else None
    report.elapsed_s = time.perf_counter() - started
    return report


def _record_chunk(engine: Engine, programme: Programme, chunk: Chunk) -> tuple[int, PurchaseBatch]:
    """Record a chunk's purchases in one transaction; rows of unknown members join its rejects."""
    # Imported here: the ledger pulls in tier evaluation, which member imports do not need.
    from loyalty.ledger import Purchase, record_purchases

    with Session(engine, expire_on_commit=False) as session:
        known = _member_ids(session, {row[1] for _, row, _ in chunk.rows})
        purchases = [Purchase(member_id=known[row[1]], external_id=row[0], amount_cents=row[2], currency=row[3],
                              category=row[4], channel=row[5], occurred_at=row[6])
                     for _, row, _ in chunk.rows if row[1] in known]
        batch = record_purchases(session, programme, purchases)
        session.commit()
    chunk.rejects.extend((line, f"member_external_id: unknown member {row[1]!r}", fields)
                         for line, row, fields in chunk.rows if row[1] not in known)
    return len(purchases), batch


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, not {chunk_size}")


def _count(report: ImportReport, rejects: RejectsFile, read: int, rejected: list[Reject], *, good: int,
           changed: int) -> None:
    rejects.add(rejected)
    report.read += read
    report.rejected += len(rejected)
    report.loaded += changed
    report.unchanged += good - changed


def _member_ids(session: Session, external_ids: set[str]) -> dict[str, int]:
    ids: dict[str, int] = {}
    wanted = sorted(external_ids)
    for start in range(0, len(wanted), 5000):  # stay well under SQLite's bound-parameter limit
        query = sa.select(MEMBERS.c.external_id, MEMBERS.c.id).where(
            MEMBERS.c.external_id.in_(wanted[start:start + 5000]))
        ids.update((ext, mid) for ext, mid in fetch_rows(session, query))
    return ids
