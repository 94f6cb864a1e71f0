"""Trust that Sybils cannot buy: standing, digest votes, and when to heal.

Identities are free, so nothing here counts an identity that has not contributed. A peer's
*standing* in a replica is the number of the last ``window`` sealed steps in which that
replica applied one of its records: what it has visibly contributed, as this replica itself
judged it. A fresh identity has none, whatever it claims.

Digest votes ("after step s my weights hash to d") are weighed by the voters' standing,
capped (``CoreConfig.standing_cap``): every established member weighs the same, a newcomer
weighs what it has contributed so far. A replica heals towards a digest only when it holds
more than half of the weight of everyone who voted for step s (itself included) *and* more
than half of the established voters (standing of at least half the cap), and it is not its
own. Without such a winner (an even split, e.g. two honest peers whose replicas sealed one
step with different records: no majority can ever form) the replica whose digest is not
the leading one follows the leader's *records*, never its weights: it keeps the
substitution only if replaying them reproduces the leader's digest, so a liar without a
majority costs a rebuild, never a weight it chose. See ``Votes.tally`` for why counts of
established voters, not weights, decide splits.
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
    supporters: tuple[bytes, ...]  # voters of the winner (or of the leader, on a split), most standing first
    split: bool
    leader: bytes | None = None  # the winner, or on a split the digest with the most voters (see tally)
    leader_supporters: tuple[bytes, ...] = ()  # its voters other than us, most standing first


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

    def tally(self, step: int, standing, mine: bytes | None = None, me: bytes | None = None,
              established: int = 8) -> Tally:
        """Weigh the votes of ``step`` by ``standing`` (a callable giving capped weights),
        counting our own digest ``mine`` with our own weight as machine ``me``.

        The heaviest digest (ties to the larger) **wins** when it holds more than half of the
        weight *and* more than half of the established voters (weight >= ``established``, us
        included when we are): each replica weighs the others by what it applied of their
        records, so after a partition each side weighs the other less and a weighted majority
        alone can point both sides at themselves; who is established is seen alike on both
        sides. (With no established voter at all, the weights alone decide.) Without a
        winner, the **leader** is the digest with the most established voters, ties to the
        side of the smallest machine id among them: every replica that sees the same votes
        picks the same leader at every disputed step."""
        weights: Counter[bytes] = Counter()
        counts: Counter[bytes] = Counter()   # established voters per digest
        lowest: dict[bytes, bytes] = {}      # digest -> its smallest established voter
        voters: dict[bytes, list[tuple[int, bytes]]] = {}

        def count(digest: bytes, machine: bytes, w: int) -> None:
            weights[digest] += w
            if w >= established:
                counts[digest] += 1
                lowest[digest] = min(lowest.get(digest, machine), machine)

        for machine, vote in self._by_step.get(step, {}).items():
            if machine == me:
                continue
            w = standing(machine)
            if w > 0:
                count(vote.digest, machine, w)
                voters.setdefault(vote.digest, []).append((w, machine))
        if mine is not None and me is not None:
            count(mine, me, max(standing(me), 1))
        total = sum(weights.values())
        if not total:
            return Tally(step, None, 0, 0, (), False)

        def supporters_of(digest: bytes) -> tuple[bytes, ...]:
            return tuple(m for _, m in sorted(voters.get(digest, []), key=lambda wm: (-wm[0], wm[1])))

        digest, weight = max(weights.items(), key=lambda kv: (kv[1], kv[0]))
        supporters = supporters_of(digest)
        voters_total = sum(counts.values())
        if 2 * weight > total and (not voters_total or 2 * counts[digest] > voters_total):
            return Tally(step, digest, weight, total, supporters, False, digest, supporters)
        leader = min(counts, key=lambda d: (-counts[d], lowest[d])) if counts else digest
        return Tally(step, None, weight, total, supporters, True, leader, supporters_of(leader))
