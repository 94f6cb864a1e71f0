"""Trust that Sybils cannot buy: standing, digest votes, and when to heal.

Identities are free, so nothing here counts identities. A peer's *standing* in a replica is
the number of the last ``window`` sealed steps in which that replica applied one of its
records: what it has visibly contributed, as this replica itself judged it. A fresh
identity has none, whatever it claims.

Digest votes ("after step s my weights hash to d") are weighed by the voters' standing,
capped (``CoreConfig.standing_cap``): every established member weighs the same, a newcomer
weighs what it has contributed so far. A replica heals towards a digest only when voters
holding more than half of the weight of everyone who voted for step s (itself included)
agree on it and it is not its own; with no such majority it keeps its weights and reports
the split.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from ...protocol.messages import Vote


class Standing:
    """Per machine: in how many of the last ``window`` sealed steps its record was applied."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._steps: deque[tuple[int, tuple[bytes, ...]]] = deque()
        self._count: Counter[bytes] = Counter()
        self.version = 0  # changes whenever any standing may have

    def sealed(self, step: int, authors) -> None:
        self.version += 1
        authors = tuple(authors)
        self._steps.append((step, authors))
        self._count.update(authors)
        while len(self._steps) > self.window:
            _, old = self._steps.popleft()
            self._count.subtract(old)
            for m in old:
                if self._count[m] <= 0:
                    del self._count[m]

    def reset(self, history: list[tuple[int, tuple[bytes, ...]]]) -> None:
        """Recount from (step, authors) of the sealed steps (after a rebuild or a restart)."""
        self.version += 1
        self._steps.clear()
        self._count.clear()
        for step, authors in sorted(history)[-self.window:]:
            self.sealed(step, authors)

    def __call__(self, machine: bytes) -> int:
        return self._count.get(machine, 0)

    def total(self) -> int:
        return sum(self._count.values())

    def members(self) -> list[bytes]:
        return sorted(self._count)


@dataclass(frozen=True)
class Tally:
    step: int
    winner: bytes | None    # the digest with a standing majority, or None (a split, or no votes)
    weight: int             # standing behind the winner (or behind the leading digest, on a split)
    total: int              # standing of everyone who voted
    supporters: tuple[bytes, ...]  # voters of the winner, most standing first
    split: bool


class Votes:
    """Signed digest votes per step; per (machine, step) the highest revision counts, and a
    machine that signs two digests at one revision is ignored for that step."""

    def __init__(self) -> None:
        self._by_step: dict[int, dict[bytes, Vote]] = {}
        self._conflicted: dict[int, set[bytes]] = {}

    def add(self, vote: Vote) -> bool:
        """True if the vote is new information (to be forwarded)."""
        if vote.machine in self._conflicted.get(vote.step, ()):
            return False
        held = self._by_step.setdefault(vote.step, {}).get(vote.machine)
        if held is not None:
            if vote.revision < held.revision or (vote.revision == held.revision and vote.digest == held.digest):
                return False
            if vote.revision == held.revision:
                self._conflicted.setdefault(vote.step, set()).add(vote.machine)
                del self._by_step[vote.step][vote.machine]
                return True
        self._by_step[vote.step][vote.machine] = vote
        return True

    def of(self, step: int) -> dict[bytes, Vote]:
        return dict(self._by_step.get(step, {}))

    def recent(self, since: int) -> list[Vote]:
        return [v for s in sorted(self._by_step) if s >= since for v in self._by_step[s].values()]

    def forget_before(self, step: int) -> None:
        for s in [s for s in self._by_step if s < step]:
            del self._by_step[s]
            self._conflicted.pop(s, None)

    def tally(self, step: int, standing, mine: bytes | None = None, me: bytes | None = None) -> Tally:
        """Weigh the votes of ``step`` by ``standing`` (a callable), counting our own digest
        ``mine`` with our own standing as machine ``me``."""
        weights: Counter[bytes] = Counter()
        voters: dict[bytes, list[tuple[int, bytes]]] = {}
        for machine, vote in self._by_step.get(step, {}).items():
            if machine == me:
                continue
            w = standing(machine)
            if w > 0:
                weights[vote.digest] += w
                voters.setdefault(vote.digest, []).append((w, machine))
        if mine is not None and me is not None:
            weights[mine] += max(standing(me), 1)  # (``standing`` is the caller's weighing, capped alike)
        total = sum(weights.values())
        if not total:
            return Tally(step, None, 0, 0, (), False)
        digest, weight = max(weights.items(), key=lambda kv: (kv[1], kv[0]))
        supporters = tuple(m for _, m in sorted(voters.get(digest, []), key=lambda wm: (-wm[0], wm[1])))
        if 2 * weight > total:
            return Tally(step, digest, weight, total, supporters, False)
        return Tally(step, None, weight, total, supporters, True)
