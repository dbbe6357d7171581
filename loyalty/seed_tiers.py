"""Month-end tier evaluation for the seeder, replayed in numpy.

:func:`loyalty.tiers.evaluate_tiers` builds one ORM object per tier change: at 100k
members over two years (about 77,000 moves and 28 evaluations) that alone took ~40 s, and
it scales linearly, which rules out a million members in minutes. The seeder already knows
every ledger line it wrote, so :class:`TierTracker` applies the same rule with arrays:

* the qualifying value at ``as_of`` sums the ``earn`` points (``basis: points``) or the
  transaction amounts (``basis: spend``) dated within
  ``[tiers.window_start(as_of), as_of]``, like :func:`loyalty.tiers.qualifying_query`;
* the target tier is :func:`loyalty.tiers.tier_for` of that value; members move up at
  every evaluation and down only when downgrades are allowed, like ``evaluate_tiers``.

Moves are written as handled ``tier_changes`` rows stamped with the evaluation instant;
the seeder writes each member's final tier once, at the end. The seeder ends with a call
to the real ``evaluate_tiers``, which finds nothing left to move when the replay is exact
(the tests check this, and that every recorded move matches ``qualifying_query``).
"""

from __future__ import annotations

import numpy as np

from loyalty.programme import Programme, TierBasis
from loyalty.seed_io import BulkWriter, from_us, to_us
from loyalty.tiers import window_start


class TierTracker:
    """Every member's tier (as a rank) and the qualifying contributions still in the window."""

    def __init__(self, programme: Programme, size: int, first_member_id: int) -> None:
        self.rules = programme.tiers
        self.by_points = self.rules.basis is TierBasis.POINTS
        self.thresholds = np.array([tier.threshold for tier in self.rules.tiers], dtype=np.int64)
        self.codes = np.array([tier.code for tier in self.rules.tiers], dtype=object)
        self.rank = np.zeros(size, dtype=np.int64)
        self.first_member_id = first_member_id
        self._member = np.zeros(0, dtype=np.int64)
        self._at = np.zeros(0, dtype=np.int64)
        self._value = np.zeros(0, dtype=np.int64)

    def add(self, member: np.ndarray, at: np.ndarray, value: np.ndarray) -> None:
        """Record qualifying contributions: earned points or spent cents, per the tier basis."""
        self._member = np.concatenate([self._member, member])
        self._at = np.concatenate([self._at, at])
        self._value = np.concatenate([self._value, value])

    def qualifying(self, at_us: int) -> np.ndarray:
        """Each member's qualifying value at ``at_us`` (evaluate in increasing time order)."""
        since = to_us(window_start(self.rules, from_us(at_us)))
        keep = self._at >= since
        # Evaluations only move forward in time: what fell out of the window never returns.
        self._member, self._at, self._value = self._member[keep], self._at[keep], self._value[keep]
        counted = self._at <= at_us
        totals = np.bincount(self._member[counted], weights=self._value[counted], minlength=self.rank.size)
        return np.rint(totals).astype(np.int64)

    def evaluate(self, writer: BulkWriter, at_us: int, *, allow_downgrade: bool | None) -> int:
        """Move members to the tier their value earns at ``at_us``; returns how many moved."""
        downgrade = self.rules.allow_downgrade if allow_downgrade is None else allow_downgrade
        value = self.qualifying(at_us)
        target = np.searchsorted(self.thresholds, value, side="right") - 1
        moves = (target > self.rank) | ((target < self.rank) & downgrade)
        members = np.flatnonzero(moves)
        if members.size == 0:
            return 0
        first = writer.next_id("tier_changes")
        stamp = writer.times(np.full(members.size, at_us))
        writer.insert("tier_changes", {
            "id": np.arange(first, first + members.size), "member_id": members + self.first_member_id,
            "from_tier": self.codes[self.rank[members]].tolist(), "to_tier": self.codes[target[members]].tolist(),
            "direction": np.where(target[members] > self.rank[members], "up", "down").tolist(),
            "qualifying_value": value[members], "changed_at": stamp, "handled_at": stamp,
        })
        writer.sync_sequence("tier_changes")
        self.rank[members] = target[members]  # members.tier is written once, at the end
        return int(members.size)
