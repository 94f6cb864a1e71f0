"""History: the one owner of ledger + replica + checkpoints, on a real (tiny) model.

Sealing, rebuilding for late records and heals, installing a downloaded checkpoint only if it
hashes right, and resuming from disk in every state a crash or a bad disk can leave."""

import errno
import json
import os

import pytest

from conftest import TEXTS, make_spec, tiny_bert
from seedswarm.model.digest import weight_digest
from seedswarm.model.replica import Replica, replay
from seedswarm.model.tasks import build_task
from seedswarm.peer.checkpoint import checkpoint_path, save_checkpoint
from seedswarm.peer.history import LEDGER_NAME, History, HistoryError
from seedswarm.protocol import Ledger, LRSchedule, Signer
from seedswarm.protocol.ledger import DiskWriteError

SIGNERS = [Signer(bytes([i + 1]) * 32) for i in range(2)]
SPEC = make_spec(lr=LRSchedule(base=1e-2), digest_every=2)


@pytest.fixture
def records(tokenizer):
    """12 steps of records of two machines, made on a live replica."""
    task = build_task(SPEC.task, tokenizer)
    live = Replica.for_task(tiny_bert(), SPEC, task)
    out = []
    for step in range(12):
        step_records = [live.local_step(step, s, [task.collate(TEXTS[i::2])]).record for i, s in enumerate(SIGNERS)]
        live.apply_step(step_records)
        out += step_records
    return out


def history(folder, **kw) -> History:
    return History(folder, SPEC, tiny_bert(), checkpoint_every=4, **kw)


def seal_all(h: History, records, steps: int) -> None:
    for step in range(steps):
        h.seal(step, [r for r in records if r.step == step])


def expected_digest(records, steps: int) -> bytes:
    return bytes.fromhex(weight_digest(replay(tiny_bert(), SPEC, [r for r in records if r.step < steps])))


def test_sealing_matches_replay_and_leaves_checkpoints_and_state(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 12)
    assert h.digest() == expected_digest(records, 12)
    assert (tmp_path / "ckpt-00000008.safetensors").exists() and (tmp_path / "ckpt-00000000.safetensors").exists()
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["sealed"] == 12 and state["digests"]["12"] == h.digest().hex()
    with pytest.raises(HistoryError):  # a second peer in the same folder
        history(tmp_path).open(resume=False)


def test_a_late_record_is_applied_at_its_canonical_place(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    late = next(r for r in records if r.step == 5 and r.machine == SIGNERS[1].machine)
    for step in range(12):
        h.seal(step, [r for r in records if r.step == step and r is not late])
    digests = h.rebuild(5, [late]).digests
    assert h.digest() == expected_digest(records, 12) and digests[12] == h.digest()


def test_a_heal_replaces_the_disputed_steps(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, [r for r in records if r.machine == SIGNERS[0].machine], 12)  # we missed machine 1 entirely
    h.rebuild(4, [r for r in records if 4 <= r.step < 12], replace=True, last=12)
    mine_before_4 = [r for r in records if r.step < 4 and r.machine == SIGNERS[0].machine]
    assert h.digest() == expected_digest(mine_before_4 + [r for r in records if r.step >= 4], 12)


def test_a_substitution_that_misses_the_expected_digest_is_undone(tmp_path, records):
    """A heal without a majority behind it (a tie) follows another replica's records only if
    they reproduce the digest it voted: a peer that lies about its digest or serves a subset
    costs a rebuild, never our records."""
    h = history(tmp_path)
    h.open(resume=False)
    mine = [r for r in records if r.machine == SIGNERS[0].machine]
    seal_all(h, mine, 12)
    before, ledger_before = h.digest(), sorted(r.rid for r in h.ledger.ordered())
    theirs = [r for r in records if 4 <= r.step < 12]
    done = h.rebuild(4, theirs, replace=True, last=12, expect=(12, b"\xee" * 32))
    assert not done.kept and h.digest() == before and sorted(r.rid for r in h.ledger.ordered()) == ledger_before
    right = expected_digest([r for r in mine if r.step < 4] + theirs, 12)
    done = h.rebuild(4, theirs, replace=True, last=12, expect=(12, right))
    assert done.kept and h.digest() == right and done.digests[12] == right


def test_our_record_of_a_step_sealed_without_it_is_never_applied(tmp_path, tokenizer, records):
    """The tensor worker computed our record of step 3 while the swarm sealed step 3 without
    it: the core never published it, so this replica must not apply it either (or it alone
    would hold other weights), and it leaves the ledger file so no rebuild brings it back."""
    task = build_task(SPEC.task, tokenizer)
    h = History(tmp_path, SPEC, tiny_bert(), task.loss, checkpoint_every=4)
    h.open(resume=False)
    others = [r for r in records if r.machine == SIGNERS[1].machine]
    seal_all(h, others, 3)
    stale = h.compute(3, [task.collate(TEXTS[:4])], SIGNERS[0]).record
    assert h.ledger.has(stale.rid)
    for step in range(3, 8):
        h.seal(step, [r for r in others if r.step == step])
    assert not h.ledger.has(stale.rid) and h.digest() == expected_digest(others, 8)
    h.rebuild(2, [])
    assert h.digest() == expected_digest(others, 8)


def test_a_downloaded_checkpoint_is_used_only_if_it_hashes_to_the_vouched_digest(tmp_path, records):
    source = history(tmp_path / "source")
    source.open(resume=False)
    seal_all(source, records, 8)
    ckpt = checkpoint_path(tmp_path / "source", 8)
    good = source.digest()
    joiner = history(tmp_path / "joiner")
    joiner.open(resume=False)
    base = joiner.digest()
    incoming = tmp_path / "joiner" / "incoming.safetensors"
    incoming.write_bytes(ckpt.read_bytes()[:-100])  # truncated
    assert not joiner.install(incoming, 8, good, 8) and joiner.digest() == base
    incoming.write_bytes(ckpt.read_bytes())
    assert not joiner.install(incoming, 8, b"\x01" * 32, 8) and joiner.digest() == base  # not what was vouched for
    incoming.write_bytes(ckpt.read_bytes())
    assert joiner.install(incoming, 8, good, 8) and joiner.digest() == good and joiner.sealed == 8
    for step in range(8, 12):
        joiner.seal(step, [r for r in records if r.step == step])
    assert joiner.digest() == expected_digest(records, 12)


def test_resume_reproduces_the_weights_and_falls_back_from_a_torn_checkpoint(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 11)
    final = h.digest()
    h.close()
    newest = checkpoint_path(tmp_path, 8)
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # half-written
    again = history(tmp_path)
    opened = again.open(resume=True)
    assert opened.verified and opened.sealed == 11 and again.digest() == final


def test_a_bit_flip_in_the_middle_of_the_ledger_is_named_and_rolled_back(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 12)
    h.close()
    path = tmp_path / LEDGER_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    again = history(tmp_path)
    opened = again.open(resume=True)
    assert opened.damage and not opened.verified
    assert opened.sealed < 12 and again.digest() == expected_digest(records, opened.sealed)
    assert (tmp_path / (LEDGER_NAME + ".damaged")).read_bytes() == bytes(data)  # nothing thrown away
    assert len(again.ledger) >= len(records) - 2  # the records after the damage are recovered


def test_a_ledger_that_no_longer_reproduces_the_recorded_digest_is_not_trusted(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 12)
    h.close()
    # the ledger lost its last records (a restored backup, say) but state.json remembers digests
    kept = [r for r in records if r.step < 10]
    from seedswarm.protocol.ledger import encode_ledger

    (tmp_path / LEDGER_NAME).write_bytes(encode_ledger(SPEC, Ledger(kept).ordered()))
    opened = history(tmp_path).open(resume=True)
    assert not opened.verified and opened.sealed <= 10


def test_no_intact_checkpoint_at_all_is_a_clear_error(tmp_path, records):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 4)
    h.close()
    for p in tmp_path.glob("ckpt-*.safetensors"):
        p.write_bytes(b"garbage")
    with pytest.raises(HistoryError, match="no intact checkpoint"):
        history(tmp_path).open(resume=True)


def test_a_full_disk_stops_sealing_cleanly_and_loses_nothing(tmp_path, records, monkeypatch):
    h = history(tmp_path)
    h.open(resume=False)
    seal_all(h, records, 5)
    before = (tmp_path / LEDGER_NAME).read_bytes()
    digest = h.digest()
    real_fsync = os.fsync

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskWriteError, match="No space left"):
        h.seal(5, [r for r in records if r.step == 5])
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (tmp_path / LEDGER_NAME).read_bytes() == before and h.sealed == 5 and h.digest() == digest
    h.seal(5, [r for r in records if r.step == 5])  # space is back: it goes on
    assert h.sealed == 6


def test_a_checkpoint_that_cannot_be_written_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("seedswarm.peer.checkpoint.save_file", full)
    with pytest.raises(DiskWriteError):
        save_checkpoint(tmp_path, tiny_bert(), 4, "00" * 32, SPEC.swarm_id)
    assert not list(tmp_path.iterdir())
    assert safetensors.torch  # the real writer is untouched


def test_our_record_is_on_disk_before_it_is_sent_and_never_recomputed_after_a_crash(tmp_path, tokenizer):
    task = build_task(SPEC.task, tokenizer)
    h = History(tmp_path, SPEC, tiny_bert(), task.loss, checkpoint_every=4)
    h.open(resume=False)
    first = h.compute(0, [task.collate(TEXTS[:4])], SIGNERS[0]).record
    h.close()  # killed before step 0 was sealed
    again = History(tmp_path, SPEC, tiny_bert(), task.loss, checkpoint_every=4)
    assert again.open(resume=True).sealed == 0
    second = again.compute(0, [task.collate(TEXTS[4:])], SIGNERS[0]).record  # other data now
    assert second == first and second.signature == first.signature  # the same record: no equivocation
