"""The ledger: the set of records of a swarm, its canonical order, equivocation, and its file.

Set semantics (SPEC section 10.2), so that replicas holding the same records hold the same
weights whatever order the records arrived in:

- a record is identified by its body (``Record.rid``): an exact duplicate is ignored;
- a machine publishes at most one record per step. Two different bodies for the same
  (step, machine) are an *equivocation*: both are kept as evidence and neither is applied
  (``applicable``). The rule looks at that step alone, so replicas that hold the same
  records of a step apply the same records, however old the evidence (what a peer does
  about an equivocator beyond that, such as distrusting it, is its own policy);
- the applicable records of a step are applied in canonical order, by machine id bytes.

File format (append-only, crash-safe)::

    b"SSLEDGER" || u8 format version (2)
    entry*      where entry = u32le length || u32le crc32(payload) || payload

The first entry's payload is the canonical swarm spec; every further entry is an encoded
record. ``read_ledger_file`` tells a torn tail (a crash in the middle of an append: cut off
silently) from damage in the middle (a bad entry followed by good ones: reported with its
offset, and the good entries after it recovered).
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ProtocolError
from .records import MAX_RECORD_BYTES, Record, decode_record
from .spec import MAX_SPEC_BYTES, SwarmSpec

MAGIC = b"SSLEDGER"
FORMAT_VERSION = 2
HEADER = MAGIC + bytes([FORMAT_VERSION])
_ENTRY = struct.Struct("<II")

NEW, DUPLICATE, EQUIVOCATION, REDUNDANT = "new", "duplicate", "equivocation", "redundant"


class Ledger:
    """An in-memory set of (already verified and admitted) records."""

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._slots: dict[tuple[int, bytes], list[Record]] = {}  # (step, machine) -> 1 record, or 2 (evidence)
        self._rids: dict[bytes, Record] = {}  # rid -> record
        self._steps: dict[int, set[bytes]] = {}
        self._applicable: dict[int, list[Record]] = {}  # cache, dropped when a step changes
        for record in records:
            self.add(record)

    def __len__(self) -> int:
        return len(self._rids)

    def __contains__(self, record: Record) -> bool:
        return record.rid in self._rids

    def has(self, rid: bytes) -> bool:
        return rid in self._rids

    def get(self, rid: bytes) -> Record | None:
        return self._rids.get(rid)

    def add(self, record: Record) -> str:
        """Insert a record. Returns NEW, DUPLICATE (same body held), EQUIVOCATION (a second body
        for a held (step, machine): both kept as evidence, neither applied) or REDUNDANT (a third
        body for a slot that already holds evidence: dropped)."""
        rid = record.rid
        if rid in self._rids:
            return DUPLICATE
        held = self._slots.get(record.slot)
        if held is None:
            self._slots[record.slot] = [record]
            outcome = NEW
        elif len(held) == 1:
            held.append(record)
            outcome = EQUIVOCATION
        else:
            return REDUNDANT
        self._rids[rid] = record
        self._steps.setdefault(record.step, set()).add(record.machine)
        self._applicable.pop(record.step, None)
        return outcome

    def equivocated(self, step: int, machine: bytes) -> bool:
        """``machine`` signed two records of ``step`` (both are held, neither applies)."""
        return len(self._slots.get((step, machine), ())) > 1

    def equivocators(self) -> dict[bytes, int]:
        """Machines with evidence of equivocation held -> the first step of it."""
        out: dict[bytes, int] = {}
        for (step, machine), held in self._slots.items():
            if len(held) > 1 and (machine not in out or step < out[machine]):
                out[machine] = step
        return out

    def authors(self, step: int) -> set[bytes]:
        """The machines whose record applies at ``step`` (the machines of ``applicable(step)``,
        without sorting: the swarm core asks this on every event)."""
        return {m for m in self._steps.get(step, ()) if len(self._slots[(step, m)]) == 1}

    def applies(self, step: int, machine: bytes) -> bool:
        """``machine`` has a record that applies at ``step``."""
        return len(self._slots.get((step, machine), ())) == 1

    def applicable(self, step: int) -> list[Record]:
        """The records applied at ``step``, in canonical order."""
        cached = self._applicable.get(step)
        if cached is not None:
            return list(cached)
        out = []
        for machine in sorted(self._steps.get(step, ())):
            held = self._slots[(step, machine)]
            if len(held) == 1:
                out.append(held[0])
        self._applicable[step] = out
        return list(out)

    def at(self, step: int) -> list[Record]:
        """Every record held for ``step`` (evidence included), in canonical order then rid."""
        return sorted((r for m in self._steps.get(step, ()) for r in self._slots[(step, m)]),
                      key=lambda r: (r.machine, r.rid))

    def ordered(self, since_step: int = 0, until_step: int | None = None) -> list[Record]:
        """Every record held (evidence included) with since_step <= step < until_step."""
        steps = sorted(s for s in self._steps if s >= since_step and (until_step is None or s < until_step))
        return [r for s in steps for r in self.at(s)]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.ordered())

    def steps(self) -> list[int]:
        return sorted(self._steps)

    def slot(self, step: int, machine: bytes) -> list[Record]:
        return list(self._slots.get((step, machine), ()))

    @property
    def last_step(self) -> int:
        return max(self._steps, default=-1)


# --- file format ----------------------------------------------------------------------------------
class LedgerCorrupt(ProtocolError):
    """A ledger file damaged in the middle (not just a torn tail)."""

    def __init__(self, path: str, damage: list[tuple[int, int]], recovered: int) -> None:
        where = ", ".join(f"offset {off} ({length} bytes)" for off, length in damage)
        super().__init__(f"{path}: corrupt ledger entries at {where}; {recovered} valid records after the damage were recovered")
        self.path, self.damage, self.recovered = path, damage, recovered


@dataclass
class LedgerScan:
    spec: SwarmSpec
    records: list[Record] = field(default_factory=list)
    torn_bytes: int = 0                                            # a torn tail, cut off
    damage: list[tuple[int, int]] = field(default_factory=list)    # (offset, length) of damaged regions
    recovered_after_damage: int = 0                                # valid records after the first damage
    step_before_damage: int = 0                                    # step of the last intact record before it


def entry(payload: bytes) -> bytes:
    return _ENTRY.pack(len(payload), zlib.crc32(payload)) + payload


def _entry_at(data: bytes, pos: int, decode, limit: int = MAX_RECORD_BYTES) -> tuple[object, int] | None:
    """(decoded payload, end offset) of a valid entry of at most ``limit`` payload bytes at
    ``pos``, or None. (The limit keeps a resynchronising scan cheap: no CRC over more bytes
    than a record can have.)"""
    if pos + _ENTRY.size > len(data):
        return None
    length, crc = _ENTRY.unpack_from(data, pos)
    end = pos + _ENTRY.size + length
    if length == 0 or length > limit or end > len(data):
        return None
    payload = data[pos + _ENTRY.size:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return decode(payload), end
    except ProtocolError:
        return None


def scan_ledger(data: bytes) -> LedgerScan:
    """Parse a ledger file's bytes, telling a torn tail from damage in the middle.

    After a bad entry the scan resynchronises on the next offset where a valid record entry
    starts (length, CRC-32 and strict decoding must all hold); if there is none, the bad
    bytes are a torn tail. Raises ProtocolError if the header or the spec entry is bad."""
    if not isinstance(data, (bytes, bytearray)) or not bytes(data).startswith(HEADER):
        raise ProtocolError("not a seedswarm v2 ledger (bad magic or format version)")
    data = bytes(data)
    first = _entry_at(data, len(HEADER), SwarmSpec.from_canonical, MAX_SPEC_BYTES)
    if first is None:
        raise ProtocolError("the ledger's first entry (the swarm spec) is missing or corrupt")
    scan = LedgerScan(spec=first[0])
    pos = first[1]
    while pos < len(data):
        found = _entry_at(data, pos, decode_record)
        if found is not None:
            record, pos = found
            scan.records.append(record)
            if scan.damage:
                scan.recovered_after_damage += 1
            continue
        resume = next((p for p in range(pos + 1, len(data)) if _entry_at(data, p, decode_record) is not None), None)
        if resume is None:
            scan.torn_bytes = len(data) - pos
            break
        if not scan.damage:
            scan.step_before_damage = scan.records[-1].step if scan.records else 0
        scan.damage.append((pos, resume - pos))
        pos = resume
    return scan


def encode_ledger(spec: SwarmSpec, records: Iterable[Record]) -> bytes:
    return HEADER + entry(spec.canonical_bytes()) + b"".join(entry(r.encode()) for r in records)


def decode_ledger(data: bytes) -> tuple[SwarmSpec, list[Record], int]:
    """(spec, records in file order, bytes of a torn tail that were ignored). Damage in the
    middle raises LedgerCorrupt (naming the offsets); use ``scan_ledger`` to recover."""
    scan = scan_ledger(data)
    if scan.damage:
        raise LedgerCorrupt("ledger", scan.damage, scan.recovered_after_damage)
    return scan.spec, scan.records, scan.torn_bytes


class DiskWriteError(OSError):
    """Writing to disk failed (disk full, read-only, ...). What was written before is intact."""


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename, fsynced: either the old
    file or the complete new one, never half of it; a failure removes the temporary file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DiskWriteError(exc.errno, f"cannot write {path}: {exc.strerror or exc}") from None


class LedgerFile:
    """An append-only ledger on disk, with its in-memory ``Ledger``.

    Opening trims a torn tail silently. Damage in the middle raises ``LedgerCorrupt`` unless
    ``recover=True``: then the damaged file is kept as ``<name>.damaged``, the valid entries
    are rewritten, and ``damage`` names what was lost (the caller re-fetches it from peers
    or refuses to go on). Appends are fsynced; a failed append (disk full) leaves the file
    exactly as it was and raises ``DiskWriteError``."""

    def __init__(self, path: str | os.PathLike, spec: SwarmSpec, recover: bool = False) -> None:
        self.path = Path(path)
        self.spec = spec
        self.ledger = Ledger()
        self.repaired_bytes = 0
        self.damage: list[tuple[int, int]] = []
        self.step_before_damage = 0
        self._broken: str | None = None
        if self.path.exists() and self.path.stat().st_size > 0:
            self._open_existing(recover)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(self.path, HEADER + entry(spec.canonical_bytes()))
        self._size = self.path.stat().st_size
        self._file = open(self.path, "ab")

    def _open_existing(self, recover: bool) -> None:
        data = self.path.read_bytes()
        try:
            scan = scan_ledger(data)
        except ProtocolError as exc:
            raise ProtocolError(f"{self.path}: {exc}") from None
        if scan.spec.swarm_id != self.spec.swarm_id:
            raise ProtocolError(f"{self.path} belongs to swarm {scan.spec.swarm_id_hex}, not {self.spec.swarm_id_hex}")
        if scan.damage and not recover:
            raise LedgerCorrupt(str(self.path), scan.damage, scan.recovered_after_damage)
        for record in scan.records:
            self.ledger.add(record)
        if scan.damage:
            self.damage, self.step_before_damage = scan.damage, scan.step_before_damage
            # a copy first: if the disk refuses either write, the damaged file is still in place
            write_atomically(self.path.with_name(self.path.name + ".damaged"), data)
            write_atomically(self.path, encode_ledger(self.spec, scan.records))
        elif scan.torn_bytes:
            with open(self.path, "r+b") as f:
                f.truncate(len(data) - scan.torn_bytes)
                f.flush()
                os.fsync(f.fileno())
            self.repaired_bytes = scan.torn_bytes

    def add(self, records: Iterable[Record]) -> list[tuple[Record, str]]:
        """Add records (to disk first, one fsync, then to memory). Returns (record, outcome)
        for every record that changed the ledger (NEW or EQUIVOCATION)."""
        if self._broken:
            raise DiskWriteError(errno.EIO, self._broken)
        probe = Ledger()
        changed = []
        for record in records:
            if self.ledger.has(record.rid) or probe.has(record.rid):
                continue
            # what the ledger would say, without changing it yet (disk first)
            held = self.ledger.slot(*record.slot) + probe.slot(*record.slot)
            if len(held) >= 2:
                continue
            probe.add(record)
            changed.append((record, NEW if not held else EQUIVOCATION))
        if changed:
            self._append(b"".join(entry(r.encode()) for r, _ in changed))
            for record, _ in changed:
                self.ledger.add(record)
        return changed

    def _append(self, data: bytes) -> None:
        try:
            self._file.write(data)
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            # cut the partial write off again so that later appends do not follow garbage
            try:
                with contextlib.suppress(OSError):
                    self._file.close()  # its buffer may still hold the part that failed
                with open(self.path, "r+b") as f:
                    f.truncate(self._size)
                    with contextlib.suppress(OSError):  # if this fails, a crash leaves a torn tail: trimmed on open
                        os.fsync(f.fileno())
                self._file = open(self.path, "ab")
            except OSError:
                self._broken = f"{self.path} could not be restored after a failed write; restart the peer"
            raise DiskWriteError(exc.errno, f"cannot append to {self.path}: {exc.strerror or exc}") from None
        self._size += len(data)

    def rewrite(self, records: Iterable[Record]) -> None:
        """Replace the whole ledger atomically (adopting another replica's history)."""
        fresh = Ledger(records)
        write_atomically(self.path, encode_ledger(self.spec, fresh.ordered()))
        self._file.close()
        self.ledger = fresh
        self._size = self.path.stat().st_size
        self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LedgerFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
