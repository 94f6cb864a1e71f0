"""The ledger: the set of records of a swarm, its canonical order and its file format.

Canonical order: records are applied sorted by ``(step, machine id bytes,
first_sample)``. Every replica that holds the same records applies them in this
order, so base weights + ledger determine the weights exactly, whatever order
the records arrived in.

File format (append-only, crash-safe)::

    b"SSLEDGER" || u8 format version (1)
    entry*      where entry = u32le length || u32le crc32(payload) || payload

The first entry's payload is the canonical swarm spec (spec.py); every further
entry is an encoded record (records.py). A torn or corrupt tail (a crash in the
middle of an append) is detected by its length or CRC and cut off on open; the
entries before it are intact.
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import ProtocolError
from .records import MAX_RECORD_BYTES, Record, decode_record
from .spec import MAX_SPEC_BYTES, SwarmSpec

MAGIC = b"SSLEDGER"
FORMAT_VERSION = 1
_HEADER = MAGIC + bytes([FORMAT_VERSION])
_ENTRY = struct.Struct("<II")


class Ledger:
    """An in-memory set of records with canonical ordering and conflict checks.

    A (machine, sample) pair names one perturbation, so two records of the same
    machine may not cover overlapping sample ranges; an identical duplicate is
    ignored (records are gossiped and may arrive more than once).
    """

    def __init__(self, records: Iterable[Record] = ()) -> None:
        self._records: dict[tuple[bytes, int], Record] = {}
        self._ranges: dict[bytes, list[tuple[int, int]]] = {}
        for record in records:
            self.add(record)

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, record: Record) -> bool:
        return self._records.get((record.machine, record.first_sample)) == record

    def check(self, record: Record) -> bool:
        """True if ``record`` is new, False if already held; ProtocolError if it conflicts."""
        existing = self._records.get((record.machine, record.first_sample))
        if existing is not None:
            if existing == record:
                return False
            raise ProtocolError("conflicting record for the same machine and sample counter")
        ranges = self._ranges.get(record.machine, [])
        pos = bisect.bisect_left(ranges, (record.first_sample, 0))
        last = record.first_sample + record.n - 1
        if pos > 0 and ranges[pos - 1][1] >= record.first_sample:
            raise ProtocolError("record reuses sample counters of an earlier record of the same machine")
        if pos < len(ranges) and ranges[pos][0] <= last:
            raise ProtocolError("record reuses sample counters of a later record of the same machine")
        return True

    def add(self, record: Record) -> bool:
        """Insert a record; returns False for an exact duplicate. Atomic: raises before changing state."""
        if not self.check(record):
            return False
        self._records[(record.machine, record.first_sample)] = record
        bisect.insort(self._ranges.setdefault(record.machine, []), (record.first_sample, record.first_sample + record.n - 1))
        return True

    def ordered(self, since_step: int = 0, until_step: int | None = None) -> list[Record]:
        """Records with since_step <= step < until_step, in canonical order."""
        chosen = [
            r for r in self._records.values()
            if r.step >= since_step and (until_step is None or r.step < until_step)
        ]
        return sorted(chosen, key=lambda r: r.order_key)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.ordered())

    def next_sample(self, machine: bytes) -> int:
        """First unused sample counter of ``machine`` (one past its highest)."""
        ranges = self._ranges.get(machine)
        return ranges[-1][1] + 1 if ranges else 0

    @property
    def last_step(self) -> int:
        return max((r.step for r in self._records.values()), default=-1)


# --- file format ----------------------------------------------------------------------------------
def _entry(payload: bytes) -> bytes:
    return _ENTRY.pack(len(payload), zlib.crc32(payload)) + payload


def _read_entries(data: bytes) -> tuple[list[bytes], int]:
    """Entries of a ledger file and the byte length of its intact prefix."""
    if not data.startswith(_HEADER):
        raise ProtocolError("not a seedswarm ledger (bad magic or format version)")
    pos, entries = len(_HEADER), []
    while pos + _ENTRY.size <= len(data):
        length, crc = _ENTRY.unpack_from(data, pos)
        if length > max(MAX_RECORD_BYTES, MAX_SPEC_BYTES):
            break
        payload = data[pos + _ENTRY.size : pos + _ENTRY.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            break
        entries.append(payload)
        pos += _ENTRY.size + length
    return entries, pos


def encode_ledger(spec: SwarmSpec, records: Iterable[Record]) -> bytes:
    return _HEADER + _entry(spec.canonical_bytes()) + b"".join(_entry(r.encode()) for r in records)


def decode_ledger(data: bytes) -> tuple[SwarmSpec, list[Record], int]:
    """(spec, records in file order, bytes of a torn tail that were ignored)."""
    entries, good = _read_entries(data)
    if not entries:
        raise ProtocolError("ledger has no swarm spec")
    spec = SwarmSpec.from_canonical(entries[0])
    return spec, [decode_record(e) for e in entries[1:]], len(data) - good


class LedgerFile:
    """An append-only ledger on disk. Appends are fsynced; a torn tail is cut off on open."""

    def __init__(self, path: str | os.PathLike, spec: SwarmSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        self.ledger = Ledger()
        self.repaired_bytes = 0
        if self.path.exists() and self.path.stat().st_size > 0:
            file_spec, records, torn = decode_ledger(self.path.read_bytes())
            if file_spec.swarm_id != spec.swarm_id:
                raise ProtocolError(f"{self.path} belongs to swarm {file_spec.swarm_id_hex}, not {spec.swarm_id_hex}")
            for record in records:
                self.ledger.add(record)
            if torn:
                with open(self.path, "r+b") as f:
                    f.truncate(self.path.stat().st_size - torn)
                    f.flush()
                    os.fsync(f.fileno())
                self.repaired_bytes = torn
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(self.path.suffix + ".tmp")
            with open(tmp, "wb") as f:
                f.write(_HEADER + _entry(spec.canonical_bytes()))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        self._file = open(self.path, "ab")

    def append(self, records: Iterable[Record]) -> list[Record]:
        """Add new records to memory and disk (one fsync); returns those that were new.
        A conflicting record raises ProtocolError before anything is added."""
        records = list(records)
        probe = Ledger()
        for record in records:  # check the batch against the ledger and against itself first
            if self.ledger.check(record):
                probe.add(record)
        return self._write([r for r in records if self.ledger.add(r)])

    def admit(self, records: Iterable[Record]) -> tuple[list[Record], list[tuple[Record, str]]]:
        """Add the records that fit, skip the ones that conflict (one fsync).
        Returns (new records, [(rejected record, reason)])."""
        new, rejected = [], []
        for record in records:
            try:
                if self.ledger.add(record):
                    new.append(record)
            except ProtocolError as exc:
                rejected.append((record, str(exc)))
        return self._write(new), rejected

    def _write(self, new: list[Record]) -> list[Record]:
        if new:
            self._file.write(b"".join(_entry(r.encode()) for r in new))
            self._file.flush()
            os.fsync(self._file.fileno())
        return new

    def rewrite(self, records: Iterable[Record]) -> None:
        """Replace the whole ledger (atomically on disk): adopting another replica's history."""
        fresh = Ledger(records)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        with open(tmp, "wb") as f:
            f.write(encode_ledger(self.spec, fresh.ordered()))
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self.ledger = fresh
        self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "LedgerFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
