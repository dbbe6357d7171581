"""From validated member rows to the driver's parameter tuples, here or in a helper process.

Validating a member row costs about as much as writing it, so on a machine with a spare
CPU a big file is read, validated and encoded by a helper process while this one writes
(:func:`in_background`); the two meet in a pipe of bounded size, so memory stays flat. Nothing
here imports SQLAlchemy, which keeps the helper's start-up short: the values are converted
by a :data:`CODECS` entry that :mod:`loyalty.import_writers` checks against the column
types' own bind processors before use.
"""

from __future__ import annotations

import gc
import marshal
import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Callable, Generator, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass
from datetime import UTC, date, datetime
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, NamedTuple

from loyalty.csv_rows import Chunk, MemberContext, Reject, validated_chunks

#: The upserts' parameters in the order their compiled statements take them today (the
#: encoder reorders if a statement ever binds them differently).
MEMBER_PARAMS = ("external_id", "first_name", "last_name", "email", "phone", "locale", "time_zone",
                 "joined_at_given", "birthday", "joined_at_given", "joined_at_given")
CONSENT_PARAMS = ("channel", "opted_in", "external_id")
#: Files at least this big are validated in a helper process when ``parallel`` is None
#: (below it, starting the helper costs more than it saves).
BACKGROUND_MIN_BYTES = 2_000_000


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None)


def _sqlite_datetime(value: datetime) -> str:
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:-6]  # without the "+00:00"


def _as_is(value: Any) -> Any:
    return value


#: name -> (timestamp, date, boolean) converters: what SQLite stores, or what drivers adapt natively.
CODECS: dict[str, tuple[Callable[[datetime], Any], Callable[[date], Any], Callable[[bool], Any]]] = {
    "sqlite": (_sqlite_datetime, date.isoformat, int),
    "native": (_naive_utc, _as_is, _as_is),
}


class Encoded(NamedTuple):
    """One chunk, ready to write: member and consent parameter tuples, rejects, rows read."""

    members: list[tuple[Any, ...]]
    consents: list[tuple[Any, ...]]
    rejects: list[Reject]
    read: int


@dataclass(frozen=True)
class MemberEncoder:
    """Turns validated member rows into parameter tuples in the compiled statements' order (picklable)."""

    member_order: tuple[str, ...]
    consent_order: tuple[str, ...]
    codec: str

    def encode(self, chunk: Chunk) -> Encoded:
        """Parameters for the member upsert and the consent upsert of every good row in ``chunk``."""
        to_datetime, to_date, to_bool = CODECS[self.codec]
        stamps: dict[datetime, Any] = {}  # joined_at values repeat (dates): convert each once
        members, consents = [], []
        for ext, first, last, email, phone, locale, zone, joined_at, birthday, email_in, sms_in in chunk.rows:
            joined = None
            if joined_at is not None and (joined := stamps.get(joined_at)) is None:
                joined = stamps[joined_at] = to_datetime(joined_at)
            born = None if birthday is None else to_date(birthday)
            members.append((ext, first, last, email, phone, locale, zone, joined, born, joined, joined))
            if email_in is not None:
                consents.append(("email", to_bool(email_in), ext))
            if sms_in is not None:
                consents.append(("sms", to_bool(sms_in), ext))
        if self.member_order != MEMBER_PARAMS:
            members = list(map(_reorder(MEMBER_PARAMS, self.member_order), members))
        if self.consent_order != CONSENT_PARAMS:
            consents = list(map(_reorder(CONSENT_PARAMS, self.consent_order), consents))
        return Encoded(members, consents, chunk.rejects, chunk.read)


def _reorder(names: tuple[str, ...], order: tuple[str, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
    pick = itemgetter(*[names.index(name) for name in order])
    return lambda values: tuple(pick(values))


def encoded_members(source: Path, now: datetime, size: int, encoder: MemberEncoder) -> Generator[Encoded]:
    """Read, validate and encode ``source`` a chunk at a time."""
    chunks = validated_chunks(source, "members", MemberContext.at(now), size)
    with closing(chunks):
        for chunk in chunks:
            yield encoder.encode(chunk)


def encoded_in_background(source: Path, now: datetime, size: int, encoder: MemberEncoder) -> Generator[Encoded]:
    """:func:`encoded_members`, run in a helper process."""
    items = in_background(encoded_members, source, now, size, encoder)
    with closing(items):
        for item in items:
            yield Encoded._make(item)


def wants_background(source: Path, parallel: bool | None) -> bool:
    """Whether to validate in a helper process: as asked, or for a big file with a spare CPU."""
    if parallel is not None:
        return parallel
    return (os.cpu_count() or 1) >= 2 and source.stat().st_size >= BACKGROUND_MIN_BYTES


# ------------------------------------------------------------------------ helper process

# Frames on the helper's stdout: kind (M: marshalled tuple, P: pickled tuple, F: pickled exception), size.
_FRAME = struct.Struct("!cQ")


def in_background(produce: Callable[..., Iterator[tuple[Any, ...]]], *args: Any) -> Generator[tuple[Any, ...]]:
    """Yield what ``produce(*args)`` yields, running it in a helper Python process.

    The helper is a fresh interpreter (``python -m loyalty.import_pipeline``), not a fork:
    it inherits no threads, connections or main module. Items are tuples; those of plain
    values travel marshalled (same interpreter both sides; twice as fast as pickle), others
    pickled, through a pipe whose bounded buffer holds the producer back when the consumer
    is slower.
    An exception in the producer is raised here; stopping early ends the helper.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    helper = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, bufsize=1 << 20)
    assert helper.stdin is not None and helper.stdout is not None
    finished = False
    try:
        with helper.stdin:
            pickle.dump((produce, args), helper.stdin)
        while (frame := _receive(helper.stdout)) is not None:
            kind, payload = frame
            if kind == b"F":
                raise pickle.loads(payload)
            yield marshal.loads(payload) if kind == b"M" else pickle.loads(payload)
        finished = True
    finally:
        if not finished:  # an error, or the consumer stopped early
            helper.kill()
        helper.wait()
        helper.stdout.close()
    if helper.returncode != 0:
        raise RuntimeError(f"the import's reader process failed (exit code {helper.returncode})")


def _receive(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    header = stream.read(_FRAME.size)
    if not header:
        return None
    kind, size = _FRAME.unpack(header)
    payload = stream.read(size)
    if len(header) != _FRAME.size or len(payload) != size:
        raise RuntimeError("the import's reader process stopped mid-message")
    return kind, payload


def _serve() -> None:
    """The helper's side: read (produce, args), write each item produced to stdout."""
    out = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
    os.dup2(2, 1)  # stray prints go to stderr, never into the stream
    _widen_pipe(out.fileno())
    gc.freeze()  # the modules' objects are permanent: keep the collector off them
    try:
        produce, args = pickle.load(sys.stdin.buffer)
        for item in produce(*args):
            try:
                _send(out, b"M", marshal.dumps(tuple(item)))
            except ValueError:  # e.g. datetimes, which drivers other than pysqlite take as they are
                _send(out, b"P", pickle.dumps(tuple(item), protocol=pickle.HIGHEST_PROTOCOL))
    except BaseException as exc:  # every failure, even KeyboardInterrupt, goes to the consumer
        _send(out, b"F", pickle.dumps(_picklable(exc)))
    finally:
        out.close()


def _widen_pipe(fd: int) -> None:
    """Linux: room for about a chunk in the pipe, so the helper runs ahead instead of waiting on it."""
    with suppress(ImportError, AttributeError, OSError):
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)


def _send(out: IO[bytes], kind: bytes, payload: bytes) -> None:
    out.write(_FRAME.pack(kind, len(payload)))
    out.write(payload)
    out.flush()


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.dumps(exc)
        return exc
    except Exception:  # an exception that cannot travel is described instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    _serve()
