"""History: the one place where records meet weights (ledger file + replica + checkpoints).

Every operation that changes the weights or the ledger goes through here, and runs on the
node's single tensor-worker thread (never on the event loop), one at a time:

    seal(step, records)         ledger += records; apply step's applicable records; checkpoint/digest
    rebuild(first, records, ...) late records or a heal: from the newest trusted checkpoint at or
                                before ``first``, replay the ledger to where we were
    install(path, step, digest) a downloaded checkpoint, verified, then replay what we hold after it
    compute(step, batches)      our own record of ``step`` on the current weights
    records(first, last)        the ledger's records of steps first..last-1 (serving ranges)
    open(resume)                start fresh from the base weights, or restore from disk and prove
                                that the ledger still reproduces the recorded digests

Checkpoints are verified against their digest when loaded; a truncated or corrupt one falls
back to an older one and finally to the base weights (step 0). ``state.json`` records the
sealed count and the digests the replica had, so a resumed peer can check its ledger.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.digest import weight_digest
from ..model.replica import LocalStep, Replica
from ..protocol.identity import Signer
from ..protocol.ledger import DiskWriteError, LedgerFile, write_atomically
from ..protocol.records import Record
from ..protocol.spec import SwarmSpec
from .core import checkpoints_to_keep
from .checkpoint import CheckpointError, checkpoint_meta, list_checkpoints, load_checkpoint, save_checkpoint

logger = logging.getLogger("seedswarm.history")

LEDGER_NAME = "ledger.ssl"
STATE_NAME = "state.json"


class HistoryError(RuntimeError):
    """The history on disk cannot be trusted or written; the message says why and what to do."""


class NoCheckpoint(HistoryError):
    """No checkpoint this replica still keeps is old enough to rebuild from."""


@dataclass
class RebuildResult:
    """What a rebuild changed: the digests recomputed, and whether a substitution was kept."""

    digests: dict[int, bytes]
    kept: bool = True


@dataclass
class Opened:
    sealed: int
    digests: dict[int, bytes] = field(default_factory=dict)
    damage: list[tuple[int, int]] = field(default_factory=list)  # (offset, length) in ledger.ssl
    verified: bool = True        # the ledger reproduced every digest recorded for it
    rolled_back_from: int | None = None


class History:
    def __init__(self, folder: Path, spec: SwarmSpec, model: nn.Module, loss_fn=None, paired_fn=None,
                 checkpoint_every: int = 20, keep: int = 3, final_step: int | None = None,
                 drift_at: int | None = None) -> None:
        self.folder = Path(folder)
        self.spec = spec
        self.model = model
        self.replica = Replica(model, spec, loss_fn, paired_fn)
        self.checkpoint_every = checkpoint_every
        self.keep = checkpoints_to_keep(spec.late_window, checkpoint_every, keep)  # a voted one among them
        self.final_step = final_step
        self.sealed = 0
        self.base_step = 0           # the oldest step we can rebuild from (a checkpoint joiner's start)
        self.digests: dict[int, bytes] = {}
        self.ledger_file: LedgerFile | None = None
        self._write_checkpoints = True
        self.drift_at = drift_at  # chaos testing: this replica computes step drift_at wrong (see _drift)

    # --- opening -------------------------------------------------------------------------
    @property
    def ledger(self):
        return self.ledger_file.ledger

    def open(self, resume: bool) -> Opened:
        path = self.folder / LEDGER_NAME
        if not resume:
            if path.exists():
                raise HistoryError(f"{self.folder} already holds a peer's state: pass --resume to continue it, "
                                   "or another --checkpoint-dir")
            self.folder.mkdir(parents=True, exist_ok=True)
            self.ledger_file = LedgerFile(path, self.spec)
            digest = self._digest()
            self._checkpoint(0, digest)
            self.digests = {0: digest}
            self._save_state()
            return Opened(0, dict(self.digests))
        if not path.exists():
            raise HistoryError(f"--resume: {self.folder} holds no ledger to resume from")
        self.ledger_file = LedgerFile(path, self.spec, recover=True)
        state = self._read_state()
        self.base_step = state.get("base_step", 0)
        recorded = self._recorded_digests(state)
        target = state.get("sealed", 0)  # the ledger may also hold our own records of steps not sealed yet
        opened = Opened(0, damage=list(self.ledger_file.damage))
        # replay from the second newest checkpoint, so the ledger is checked against the newest one
        # and every digest state.json recorded since
        steps = sorted(s for s, _ in list_checkpoints(self.folder) if self.base_step <= s <= target)
        start = self._load_newest_checkpoint(steps[-2] if len(steps) > 1 else target, recorded)
        self.sealed = start
        self.digests = {start: self._digest()}
        self._write_checkpoints = False  # until the ledger is proven, its replay overwrites nothing
        try:
            self._replay(start, target)
        finally:
            self._write_checkpoints = True
        mismatch = [s for s, d in recorded.items() if s in self.digests and self.digests[s] != d]
        if opened.damage or mismatch:
            # the ledger no longer reproduces what this replica had: roll back to the newest
            # checkpoint before the first doubtful step and let the peers fill in the rest
            doubtful = min(mismatch + [self._first_doubtful_step()])
            back = self._load_newest_checkpoint(max(self.base_step, doubtful - 1), recorded)
            opened.verified = False
            opened.rolled_back_from = self.sealed
            self.sealed = back
            self.digests = {s: d for s, d in self.digests.items() if s <= back}
            self.digests[back] = self._digest()
        opened.sealed = self.sealed
        opened.digests = dict(self.digests)
        self._save_state()
        return opened

    def _recorded_digests(self, state: dict) -> dict[int, bytes]:
        """What this replica recorded its weights to be: state.json's digests and the digests in
        its checkpoints' descriptions (a checkpoint's weights are checked when it is loaded)."""
        recorded = {}
        for step, path in list_checkpoints(self.folder):
            try:
                recorded[step] = bytes.fromhex(checkpoint_meta(path)["digest"])
            except (CheckpointError, ValueError):
                continue
        for k, v in state.get("digests", {}).items():
            try:
                recorded[int(k)] = bytes.fromhex(v)
            except (TypeError, ValueError):
                continue
        return recorded

    def _first_doubtful_step(self) -> int:
        """The earliest step a damaged region of the ledger file could have held: records are
        appended in seal order (late ones at most late_window steps back), so the damage lies
        after the last intact record before it, less the late window."""
        if not self.ledger_file.damage:
            return 1 << 62
        return max(0, self.ledger_file.step_before_damage - self.spec.late_window)

    def _load_newest_checkpoint(self, at_most: int, recorded: dict[int, bytes]) -> int:
        """Load the newest checkpoint <= at_most that reads back and hashes to its digest (and
        to the digest this replica recorded for that step); return its step."""
        for step, path in reversed(list_checkpoints(self.folder)):
            if step > at_most or step < self.base_step:
                continue
            try:
                meta = checkpoint_meta(path)
                if meta["step"] != step or meta["swarm_id"] != self.spec.swarm_id_hex:
                    raise CheckpointError(f"{path} belongs to another step or swarm")
                expected = recorded.get(step, bytes.fromhex(meta["digest"]))
                if expected.hex() != meta["digest"]:
                    raise CheckpointError(f"{path} is not the checkpoint this replica recorded")
                load_checkpoint(path, self.model, meta["digest"])
            except CheckpointError as exc:
                logger.warning("skipping checkpoint %s: %s", path.name, exc)
                continue
            self.replica.reset()
            return step
        raise NoCheckpoint(f"no intact checkpoint at or before step {at_most} in {self.folder} (the base checkpoint "
                           "ckpt-00000000 is gone or corrupt, or older ones were pruned): start a fresh --checkpoint-dir")

    # --- the operations ------------------------------------------------------------------
    def compute(self, step: int, batches: Sequence[Any], signer: Signer, ticket: bytes = b"") -> LocalStep:
        """Our record of ``step``, on disk before anyone sees it: a peer restarted after a
        crash publishes the same record again, never a second one (an equivocation)."""
        held = self.ledger.slot(step, signer.machine)
        if held:
            return LocalStep(held[0], [], [], 0.0)
        local = self.replica.local_step(step, signer, batches, ticket)
        self.ledger_file.add([local.record])
        return local

    def seal(self, step: int, records: Sequence[Record]) -> bytes | None:
        """Apply step ``step``; returns the digest if the spec or the final step asks for one."""
        if step != self.sealed:
            raise HistoryError(f"asked to seal step {step} with {self.sealed} steps sealed")
        self.ledger_file.add(records)
        sealed_rids = {r.rid for r in records}
        stray = [r for r in self.ledger.at(step) if r.rid not in sealed_rids]
        if stray:  # our record, computed after the swarm sealed the step without it: never sent, never applied
            self.ledger_file.rewrite([r for r in self.ledger.ordered() if r.step != step or r.rid in sealed_rids])
        self.replica.apply_step(self.ledger.applicable(step))
        self.sealed = step + 1
        self._drift()
        digest = self._after_step()
        self._save_state()
        return digest

    def rebuild(self, first: int, records: Sequence[Record], replace: bool = False, last: int = 0,
                trusted: dict[int, bytes] | None = None, expect: tuple[int, bytes] | None = None) -> RebuildResult:
        """Add (or, with ``replace``, substitute for steps first..last-1) records, then replay
        from the newest trusted checkpoint at or before ``first``. With ``expect`` = (step,
        digest), a substitution is kept only if the replay reproduces that digest; otherwise
        the replaced records are restored and replayed again (``kept`` False: the weights are
        what they were). NoCheckpoint (weights unchanged, records kept) when no checkpoint old
        enough is left."""
        previous: list[Record] = []
        if replace:
            previous = [r for r in self.ledger.ordered() if first <= r.step < last]
            outside = [r for r in self.ledger.ordered() if not first <= r.step < last]
            self.ledger_file.rewrite(outside + list(records))
        else:
            self.ledger_file.add(records)
        top = self.sealed
        try:
            changed = self._replay_from(first, top, trusted)
        except NoCheckpoint:
            if replace:  # the weights are unchanged: so are the records they were made from
                self.ledger_file.rewrite([r for r in self.ledger.ordered() if not first <= r.step < last] + previous)
            raise
        if replace and expect is not None and changed.get(expect[0], self.digests.get(expect[0])) != expect[1]:
            outside = [r for r in self.ledger.ordered() if not first <= r.step < last]
            self.ledger_file.rewrite(outside + previous)
            return RebuildResult(self._replay_from(first, top, trusted), kept=False)
        return RebuildResult(changed)

    def _replay_from(self, first: int, top: int, trusted: dict[int, bytes] | None) -> dict[int, bytes]:
        recorded = {s: d for s, d in (trusted or {}).items()}
        # (records of steps before a checkpoint we joined from are kept, but our history starts there)
        start = self._load_newest_checkpoint(max(min(first, top), self.base_step), recorded)
        self.sealed = start
        self.digests = {s: d for s, d in self.digests.items() if s <= start}
        changed = self._replay(start, top)
        self._save_state()
        return changed

    def install(self, path: Path, step: int, digest: bytes, replay_to: int) -> bool:
        """A downloaded checkpoint: used only if it reads back and hashes to ``digest``."""
        self.replica.flush()
        try:
            load_checkpoint(path, self.model, digest.hex())
        except CheckpointError as exc:
            logger.warning("downloaded checkpoint refused: %s", exc)
            path.unlink(missing_ok=True)
            return False
        self.replica.reset()
        self.drift_at = None  # the swarm told this replica it drifted: the chaos is over
        os.replace(path, self.folder / f"ckpt-{step:08d}.safetensors")
        write_atomically(self.folder / f"ckpt-{step:08d}.json",
                         json.dumps({"step": step, "digest": digest.hex(), "swarm_id": self.spec.swarm_id_hex}).encode())
        self.sealed = step
        self.digests = {step: digest}
        if self.ledger.last_step < step:  # a newcomer: its history starts at the checkpoint
            self.base_step = step
        self._replay(step, max(step, replay_to))
        self._save_state()
        return True

    def records(self, first: int, last: int) -> list[Record]:
        return self.ledger.ordered(first, last)

    def digest(self) -> bytes:
        return self._digest()

    def close(self) -> None:
        if self.ledger_file is not None:
            self.ledger_file.close()

    # --- internals -----------------------------------------------------------------------
    def _digest(self) -> bytes:
        self.replica.flush()
        return bytes.fromhex(weight_digest(self.model))

    def _wants_digest(self, sealed: int) -> bool:
        return sealed % self.spec.digest_every == 0 or sealed == self.final_step

    def _after_step(self) -> bytes | None:
        if not self._wants_digest(self.sealed):
            return None
        digest = self._digest()
        self.digests[self.sealed] = digest
        if self.sealed % self.checkpoint_every == 0 and self._write_checkpoints:
            self._checkpoint(self.sealed, digest)
        return digest

    def _checkpoint(self, step: int, digest: bytes) -> None:
        self.replica.flush()
        save_checkpoint(self.folder, self.model, step, digest.hex(), self.spec.swarm_id, self.keep)

    def _replay(self, start: int, stop: int) -> dict[int, bytes]:
        changed = {}
        for step in range(start, stop):
            self.replica.apply_step(self.ledger.applicable(step))
            self.sealed = step + 1
            self._drift()
            digest = self._after_step()
            if digest is not None:
                changed[self.sealed] = digest
        return changed

    def _drift(self) -> None:
        """Chaos testing (--fault-corrupt-at N): the replica computes step N wrong, live and in
        every rebuild, until a checkpoint the swarm vouches for replaces its weights."""
        if self.drift_at is not None and self.sealed == self.drift_at:
            self.replica.flush()
            with torch.no_grad():
                self.replica.zo.tensors[0].param.data.view(-1)[0] += 1e-3

    def _read_state(self) -> dict:
        try:
            state = json.loads((self.folder / STATE_NAME).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self) -> None:
        state = {"sealed": self.sealed, "base_step": self.base_step,
                 "digests": {str(s): d.hex() for s, d in sorted(self.digests.items())[-16:]}}
        write_atomically(self.folder / STATE_NAME, json.dumps(state).encode())


__all__ = ["DiskWriteError", "History", "HistoryError", "Opened", "RebuildResult", "LEDGER_NAME"]
