"""Fuzzing every decoder of untrusted bytes (and of untrusted JSON-like values).

The property, for each decoder: it returns a *valid* value (one that re-encodes to the bytes it
came from, or round-trips through its canonical form) or raises ProtocolError. Nothing else
may escape: no TypeError, OverflowError, UnicodeError, RecursionError, AssertionError.

Inputs: random bytes; mutations (bit flips, overwrites, truncations, insertions, deletions,
duplicated ranges) of valid encodings; wrong types placed anywhere inside valid containers,
including inside the canonical values nested as bytes in others (a record in a message, a
spec in a DHT value, payloads of a ledger file); deep nesting (100,000 levels); every field of
a JSON spec set to every wrong type.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol_samples import F32, SIGNERS, SPECS, A, B, OPEN, Raw, enc, record, vote
from seedswarm.protocol import ProtocolError, SwarmSpec, decode_ledger, decode_record, encode_ledger, scan_ledger
from seedswarm.protocol.canonical import pack, unpack_canonical
from seedswarm.protocol.directory import (Announcement, MemberInfo, decode_announcement, decode_entry, decode_member,
                                          encode_entry)
from seedswarm.protocol.ledger import HEADER, entry
from seedswarm.protocol.messages import (Bye, Gossip, Peers, RangeReply, RangeRequest, Status, Votes, decode_message,
                                         decode_vote, encode_message)

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
DEEP = 100_000


def deep_array(levels: int) -> Raw:
    return Raw(b"\x91" * levels + b"\x90")


def deep_map(levels: int) -> Raw:
    return Raw(b"\x81\xa1k" * levels + b"\xc0")


def deep_list(levels: int) -> list:
    value: list = []
    for _ in range(levels):
        value = [value]
    return value


NAN, INF = float("nan"), float("inf")
#: Values of the wrong type (or range) for some field of every container, as msgpack can carry them.
WRONG = [True, False, None, 0, 1, -1, 127, 128, 255, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1, 0.0, -0.0, 1.0,
         1.5, 1e300, NAN, INF, -INF, F32(1.5), F32(1.0), "", "x", "é", "ss2", "spec", "member", "gossip", "\U0001f600",
         b"", b"\x00", b"\x80", b"\xff" * 16, bytes(32), bytes(64), SIGNERS[0].machine, [], [0], [[]], {}, {"a": 1},
         {"a": {"b": {}}}, {1: 2}, {b"k": 1}, {"a": 1, 1: "a"}, msgpack.ExtType(1, b"x"), Raw(b"\xd6\xff" + bytes(4)),
         deep_array(40), deep_map(40)]
#: ... and as JSON-like objects can (from JSON, or a caller's dict): also integers past 64 bits.
WRONG_OBJECTS = [v for v in WRONG if not isinstance(v, (Raw, F32, msgpack.ExtType))] + [
    2**64, -(2**63) - 1, 10**400, -(10**400), "\ud800", {"\ud800": 1}, {"a": "\udfff"}, {None: 1}, {(1, 2): 3},
    [1, "a", None, 1.5], deep_list(40), (), (1, 2)]


# --- valid samples ------------------------------------------------------------------------------
SWARM = OPEN.swarm_id
RECORDS = [record(A, 0), record(B, 0, b"\x7f\x81"), record(A, 1), record(B, 2**40, bytes(range(1, 17)), exp=64),
           record(A, 2**64 - 1, b"\xff"), record(A, 3, spec=SPECS[1]), record(B, 4, spec=SPECS[2])]
VOTES = [vote(A), vote(B, 2**64 - 1, 2**64 - 1), vote(A, spec=SPECS[2])]
MESSAGES = [Status(3, 1, 2, 150), Status(0, 0, 0, 0), Gossip(tuple(RECORDS[:3]), (RECORDS[0].rid,), (RECORDS[1].rid,)),
            Gossip(), RangeRequest(0, 5), RangeReply(0, 5, True, tuple(RECORDS[:3])), RangeReply(7, 7, False, ()),
            Votes(tuple(VOTES)), Peers(tuple(s.machine for s in SIGNERS[:1]), tuple(s.machine for s in SIGNERS[1:])), Bye()]
MEMBER = MemberInfo(step=3, status="training", name="peer", loss=0.5, step_time_ms=120, checkpoint=2, sent=10,
                    received=20, heals=1, rejected=4, suspects={B.machine.hex(): 4}, reach="relayed", relay="relay",
                    peers=3)
ANNOUNCEMENT = Announcement("s", "m", "label-prompts", 9, 3)
ENTRIES = [encode_entry("spec", s.swarm_id, s) for s in SPECS] + [
    encode_entry("member", SWARM, MEMBER), encode_entry("member", SWARM, MemberInfo()),
    encode_entry("swarm", SWARM, ANNOUNCEMENT)]
LEDGER_PAYLOADS = [[OPEN.canonical_bytes()] + [r.encode() for r in RECORDS[:4]],
                   [SPECS[2].canonical_bytes(), RECORDS[-1].encode(), RECORDS[-1].encode()], [OPEN.canonical_bytes()]]


def ledger_bytes(payloads: list) -> bytes:
    """A ledger file of these payloads (any value not bytes is msgpack-encoded), CRCs valid."""
    return HEADER + b"".join(entry(p if isinstance(p, bytes) else enc(p)) for p in payloads)


LEDGERS = [ledger_bytes(p) for p in LEDGER_PAYLOADS]


# --- the decoders, each with what makes the value it returns valid ------------------------------
def _record(r, data):
    assert r.encode() == data and decode_record(r.encode()) == r


def _vote(v, data):
    assert v.encode() == data and decode_vote(v.encode()) == v


def _message(m, data):
    assert encode_message(m) == data


def _spec(spec: SwarmSpec, _data=None) -> None:
    """A spec one peer accepts must be one every peer accepts: its canonical bytes decode to
    it again (within the size a peer fetches), and so does its JSON."""
    assert SwarmSpec.from_canonical(spec.canonical_bytes(), spec.swarm_id) == spec
    assert SwarmSpec.from_json(spec.to_json()) == spec


def _spec_canonical(spec, data):
    assert spec.canonical_bytes() == data
    _spec(spec)


def _scan(scan, data):
    _spec(scan.spec)
    for offset, length in scan.damage:
        assert len(HEADER) < offset and length > 0 and offset + length <= len(data)
    assert 0 <= scan.torn_bytes <= len(data)
    again = scan_ledger(encode_ledger(scan.spec, scan.records))
    assert again.records == scan.records and not again.damage and not again.torn_bytes


def _ledger(decoded, data):
    spec, records, torn = decoded
    _spec(spec)
    assert decode_ledger(encode_ledger(spec, records))[1] == records and 0 <= torn <= len(data)


def _entry(e, data):
    assert encode_entry(e.kind, e.swarm, e.value) == data


def _dht_obj(decode):
    def valid(value, _obj):
        obj = value.to_obj()
        assert decode(obj) == value and unpack_canonical(pack(obj), 1 << 16, "value") == obj
    return valid


def _canonical(obj, data):
    assert pack(obj) == data


@dataclass(frozen=True)
class Decoder:
    decode: Callable[[object], object]
    valid: Callable[[object, object], None]   # (decoded value, input): asserts the value is valid
    seeds: list                                   # valid inputs
    tree: Callable[[object], object]              # input -> a mutable tree of it
    build: Callable[[object], object]             # tree -> input
    deep: list                                    # inputs nesting DEEP levels, in various places


def _canonical_tree(data: bytes):
    return unpack_canonical(data, 1 << 20, "seed")


def _payload_tree(data: bytes):
    """The payloads of a valid ledger file, as a list of bytes."""
    spec, records, _ = decode_ledger(data)
    return [spec.canonical_bytes()] + [r.encode() for r in records]


def _json_text(obj) -> str:
    return json.dumps(obj, default=lambda o: o.hex() if isinstance(o, bytes) else repr(o), skipkeys=True)


def _same(value):
    return value


def _spec_with_options(encode, **options):
    return encode({**OPEN.to_dict(), "task": {"kind": "k", "options": options}})


BYTES_DEEP = [enc(deep_array(DEEP)), enc(deep_map(DEEP)), enc(deep_array(17)), enc(deep_array(1000))]
JSON_DEEP = "[" * DEEP + "]" * DEEP
DECODERS = {
    "record": Decoder(
        decode_record, _record, [r.encode() for r in RECORDS], _canonical_tree, enc,
        BYTES_DEEP + [enc([2, 0, A.machine, 3, deep_array(n), b"", bytes(64)]) for n in (200, DEEP)]),
    "vote": Decoder(
        decode_vote, _vote, [v.encode() for v in VOTES], _canonical_tree, enc,
        BYTES_DEEP + [enc([2, 0, deep_array(100), 0, A.machine, b"", bytes(64)])]),
    "message": Decoder(
        decode_message, _message, [encode_message(m) for m in MESSAGES], _canonical_tree, enc,
        BYTES_DEEP + [enc(["gossip", deep_array(DEEP), [], [], []]), enc(["gossip", [], [deep_map(DEEP)], [], []]),
                      enc(["gossip", [enc(deep_array(DEEP))], [], [], []]), enc(["votes", [enc(deep_array(300))]])]),
    "spec-canonical": Decoder(
        SwarmSpec.from_canonical, _spec_canonical, [s.canonical_bytes() for s in SPECS], _canonical_tree, enc,
        BYTES_DEEP + [_spec_with_options(enc, o=deep_array(DEEP)), _spec_with_options(enc, o=deep_array(14))]),
    "spec-json": Decoder(
        SwarmSpec.from_json, _spec, [s.to_json() for s in SPECS], json.loads, _json_text,
        [JSON_DEEP, '{"a": ' * DEEP + "1" + "}" * DEEP, json.dumps({"name": "s"}).replace('"s"', JSON_DEEP),
         OPEN.to_json().replace('"prompts"', f'"deep": {JSON_DEEP}, "prompts"'),
         OPEN.to_json().replace('"prompts"', '"deep": ' + "[" * 14 + "]" * 14 + ', "prompts"')]),
    "spec-dict": Decoder(
        SwarmSpec.from_dict, _spec, [s.to_dict() for s in SPECS], _same, _same,
        [deep_list(DEEP), {**OPEN.to_dict(), "name": deep_list(DEEP)}, {**OPEN.to_dict(), "trainable": deep_list(DEEP)},
         _spec_with_options(_same, o=deep_list(DEEP)), _spec_with_options(_same, o=deep_list(14))]),
    "scan-ledger": Decoder(
        scan_ledger, _scan, LEDGERS, _payload_tree, ledger_bytes,
        [HEADER + enc(deep_array(DEEP)), ledger_bytes([enc(deep_array(DEEP))]),
         ledger_bytes([OPEN.canonical_bytes(), enc(deep_array(1000))]),
         ledger_bytes([OPEN.canonical_bytes(), enc(deep_array(DEEP))])]),
    "decode-ledger": Decoder(
        decode_ledger, _ledger, LEDGERS, _payload_tree, ledger_bytes,
        [ledger_bytes([OPEN.canonical_bytes(), enc(deep_array(1000)), RECORDS[0].encode()])]),
    "dht-entry": Decoder(
        decode_entry, _entry, ENTRIES, _canonical_tree, enc,
        BYTES_DEEP + [enc(["ss2", "member", SWARM, deep_map(DEEP)]), enc(["ss2", "spec", SWARM, enc(deep_array(DEEP))]),
                      enc(["ss2", "member", SWARM, {**MEMBER.to_obj(), "suspects": deep_map(30)}])]),
    "dht-member": Decoder(
        decode_member, _dht_obj(decode_member), [MEMBER.to_obj(), MemberInfo().to_obj()], _same, _same,
        [deep_list(DEEP), {**MEMBER.to_obj(), "suspects": {"k": deep_list(DEEP)}},
         {**MEMBER.to_obj(), "loss": deep_list(DEEP)}]),
    "dht-announcement": Decoder(
        decode_announcement, _dht_obj(decode_announcement), [ANNOUNCEMENT.to_obj()], _same, _same,
        [deep_list(DEEP), {**ANNOUNCEMENT.to_obj(), "name": deep_list(DEEP)}]),
    "canonical": Decoder(
        lambda data: unpack_canonical(data, 1 << 20, "value"), _canonical,
        [r.encode() for r in RECORDS[:2]] + ENTRIES + [encode_message(MESSAGES[2])], _canonical_tree, enc,
        BYTES_DEEP + [enc({"a": [deep_map(DEEP)]})]),
}
BYTE_DECODERS = [name for name, d in DECODERS.items() if isinstance(d.seeds[0], bytes)]
TEXT_DECODERS = ["spec-json"]
OBJECT_DECODERS = [name for name, d in DECODERS.items() if isinstance(d.seeds[0], dict)]


def survives(decoder: Decoder, data: object) -> None:
    """The property: ProtocolError, or a value that is valid."""
    try:
        value = decoder.decode(data)
    except ProtocolError:
        return
    decoder.valid(value, data)


# --- strategies ---------------------------------------------------------------------------------
@st.composite
def mutated(draw, seeds: list) -> bytes | str:
    """A valid encoding with a few bytes (or characters) flipped, overwritten, cut, inserted,
    deleted or duplicated."""
    seed = draw(st.sampled_from(seeds))
    text = isinstance(seed, str)
    data = bytearray(seed.encode("utf-8") if text else seed)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "duplicate":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data).decode("utf-8", "replace") if text else bytes(data)


def _inner(node: bytes):
    """The container held canonically inside a bytes value (a record in a message, a spec in
    a DHT value), or None."""
    try:
        inner = unpack_canonical(node, 1 << 20, "inner")
    except ProtocolError:
        return None
    return inner if isinstance(inner, (list, dict)) else None


@st.composite
def retyped(draw, tree: object, wrong: list, levels: int = 0) -> object:
    """``tree`` with one node somewhere replaced by a value of the wrong type, or a container
    with an element added, dropped, or a key renamed: a fresh copy, ``tree`` is not changed."""
    if isinstance(tree, bytes) and levels < 4 and (inner := _inner(tree)) is not None and draw(st.booleans()):
        return enc(draw(retyped(inner, wrong, levels + 1)))
    if not isinstance(tree, (list, dict)) or (levels and draw(st.integers(0, 3)) == 0):
        return draw(st.sampled_from(wrong))
    if isinstance(tree, list):
        out = list(tree)
        action = draw(st.sampled_from(["descend"] * 4 + ["append", "drop"]))
        if action == "append" or not out:
            out.append(draw(st.sampled_from(wrong)))
        elif action == "drop":
            del out[draw(st.integers(0, len(out) - 1))]
        else:
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(retyped(out[i], wrong, levels + 1))
        return out
    out = dict(tree)
    action = draw(st.sampled_from(["descend"] * 4 + ["add", "drop", "rekey"]))
    keys = list(out)
    if action == "add" or not keys:
        out[draw(st.sampled_from(["x", "", "zzz", "step", 1, b"k"]))] = draw(st.sampled_from(wrong))
    elif action == "drop":
        del out[draw(st.sampled_from(keys))]
    elif action == "rekey":
        key = draw(st.sampled_from(keys))
        out[draw(st.sampled_from([key.upper() if isinstance(key, str) else "k", 0, b"k", True]))] = out.pop(key)
    else:
        key = draw(st.sampled_from(keys))
        out[key] = draw(retyped(out[key], wrong, levels + 1))
    return out


@st.composite
def with_wrong_types(draw, name: str):
    decoder = DECODERS[name]
    tree = decoder.tree(draw(st.sampled_from(decoder.seeds)))
    wrong = WRONG_OBJECTS if name in OBJECT_DECODERS or name in TEXT_DECODERS else WRONG
    for _ in range(draw(st.integers(1, 2))):
        tree = draw(retyped(tree, wrong))
    return decoder.build(tree)


# --- the properties -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BYTE_DECODERS)
@FUZZ
@given(data=st.data())
def test_random_bytes(name, data):
    survives(DECODERS[name], data.draw(st.binary(max_size=600)))


@pytest.mark.parametrize("name", BYTE_DECODERS)
@FUZZ
@given(data=st.data())
def test_random_bytes_after_a_valid_prefix(name, data):
    """Random bytes where a decoder has already accepted a header (magic, array, kind...)."""
    seed = data.draw(st.sampled_from(DECODERS[name].seeds))
    cut = data.draw(st.integers(0, len(seed)))
    survives(DECODERS[name], seed[:cut] + data.draw(st.binary(max_size=200)))


@pytest.mark.parametrize("name", BYTE_DECODERS + TEXT_DECODERS)
@FUZZ
@given(data=st.data())
def test_mutations_of_valid_encodings(name, data):
    survives(DECODERS[name], data.draw(mutated(DECODERS[name].seeds)))


@pytest.mark.parametrize("name", list(DECODERS))
@FUZZ
@given(data=st.data())
def test_wrong_types_inside_valid_containers(name, data):
    survives(DECODERS[name], data.draw(with_wrong_types(name)))


@pytest.mark.parametrize("name", list(DECODERS))
def test_valid_inputs_decode(name):
    for seed in DECODERS[name].seeds:
        DECODERS[name].valid(DECODERS[name].decode(seed), seed)


@pytest.mark.parametrize("name", list(DECODERS))
def test_deep_nesting_is_refused_without_recursion(name):
    for data in DECODERS[name].deep:
        survives(DECODERS[name], data)


def test_random_text_as_a_json_spec():
    @FUZZ
    @given(st.text(max_size=300) | st.binary(max_size=300) | st.none() | st.integers() | st.lists(st.integers()))
    def run(text):
        survives(DECODERS["spec-json"], text)
    run()


def _paths(obj, prefix=()):
    """Every path to a node of a JSON-like tree (the root excluded)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        yield prefix + (key,)
        yield from _paths(value, prefix + (key,))


def _replaced(tree, path, value):
    if not path:
        return value
    out = dict(tree) if isinstance(tree, dict) else list(tree)
    out[path[0]] = _replaced(tree[path[0]], path[1:], value)
    return out


SPEC_TREES = [s.to_dict() for s in SPECS]


@pytest.mark.parametrize("path", sorted({p for t in SPEC_TREES for p in _paths(t)}, key=repr), ids=repr)
def test_every_spec_field_with_every_wrong_type(path):
    for tree in SPEC_TREES:
        try:
            _replaced(tree, path, None)
        except (KeyError, IndexError):
            continue
        for value in WRONG_OBJECTS:
            bad = _replaced(tree, path, value)
            survives(DECODERS["spec-dict"], bad)
            survives(DECODERS["spec-json"], _json_text(bad))
            survives(DECODERS["spec-json"], json.dumps(bad, default=repr, skipkeys=True).encode())


# --- checkpoint stream frames (peer/checkpoint.py), without a network ---------------------------------
class _Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, data):
        self.data += data

    async def drain(self):
        pass


def _frames(*payloads: bytes) -> bytes:
    return b"".join(len(p).to_bytes(8, "big") + p for p in payloads)


def _stream(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


def _checkpoint_header(header: bytes) -> tuple[dict, bytes]:
    """receive_checkpoint given this header frame and then a 10-byte file: (header, file)."""
    from seedswarm.peer.checkpoint import receive_checkpoint

    async def go(folder):
        out = await receive_checkpoint(_stream(_frames(header, b"0123456789", b"")), _Sink(), 7, folder / "ckpt")
        return out, (folder / "ckpt").read_bytes()
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(go(Path(folder)))


def _received(result, _data):
    header, file = result
    assert file == b"0123456789" and header["size"] == 10 and header["step"] == 7


def _checkpoint_request(request: bytes) -> object:
    """serve_checkpoint given this request frame, serving a folder holding step 7: its reply header."""
    from seedswarm.peer.checkpoint import serve_checkpoint

    async def go(folder):
        (folder / "ckpt-00000007.safetensors").write_bytes(b"weights")
        (folder / "ckpt-00000007.json").write_text(json.dumps({"step": 7, "digest": "ab" * 32, "swarm_id": "00"}))
        sink = _Sink()
        await serve_checkpoint(folder, _stream(_frames(request)), sink)
        return unpack_canonical(bytes(sink.data[8:8 + int.from_bytes(sink.data[:8], "big")]), 4096, "reply")
    with tempfile.TemporaryDirectory() as folder:
        return asyncio.run(go(Path(folder)))


def _served(header, _data):
    assert set(header) in ({"error"}, {"step", "digest", "size"})


CHECKPOINT_HEADER = pack({"step": 7, "digest": "ab" * 32, "size": 10})
CHECKPOINT_REQUEST = pack({"step": 7})
DECODERS["checkpoint-header"] = Decoder(_checkpoint_header, _received, [CHECKPOINT_HEADER], _canonical_tree, enc,
                                        BYTES_DEEP)
DECODERS["checkpoint-request"] = Decoder(_checkpoint_request, _served, [CHECKPOINT_REQUEST, pack({"step": 3})],
                                         _canonical_tree, enc, [enc(deep_array(60)), enc({"step": deep_array(50)})])


@pytest.mark.parametrize("name", ["checkpoint-header", "checkpoint-request"])
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_checkpoint_stream_frames(name, data):
    decoder = DECODERS[name]
    limit = 4096 if name == "checkpoint-header" else 64
    survives(decoder, data.draw(st.binary(max_size=limit) | mutated(decoder.seeds) | with_wrong_types(name)))


@pytest.mark.parametrize("name", ["checkpoint-header", "checkpoint-request"])
def test_checkpoint_stream_frames_valid_and_deep(name):
    for seed in DECODERS[name].seeds:
        DECODERS[name].valid(DECODERS[name].decode(seed), seed)
    for data in DECODERS[name].deep:
        survives(DECODERS[name], data)


def test_checkpoint_metadata_file():
    """checkpoint_meta reads a local JSON file: CheckpointError (only) for anything malformed."""
    from seedswarm.peer.checkpoint import CheckpointError, checkpoint_meta
    good = json.dumps({"step": 7, "digest": "ab" * 32, "swarm_id": SWARM.hex()})

    @settings(FUZZ, max_examples=80)
    @given(st.text(max_size=200) | mutated([good]) | st.sampled_from(["[" * DEEP, "[" * DEEP + "]" * DEEP, "1" * 5000]))
    def run(text):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "ckpt-00000007.safetensors"
            path.with_suffix(".json").write_text(text, encoding="utf-8", errors="surrogatepass")
            try:
                meta = checkpoint_meta(path)
            except CheckpointError:
                return
            assert type(meta["step"]) is int and len(meta["digest"]) == 64
    run()


def test_a_cut_checkpoint_transfer_continues_where_it_ended(tmp_path):
    """A relayed connection ends after 128 KiB: the client keeps the part, asks again with its
    offset, and gets exactly the rest; a different file under the same step starts over."""
    from seedswarm.peer.checkpoint import CHUNK, TransferCut, receive_checkpoint, serve_checkpoint

    served = tmp_path / "served"
    served.mkdir()
    data = bytes(range(256)) * (3 * CHUNK // 256 + 7)
    (served / "ckpt-00000007.safetensors").write_bytes(data)
    (served / "ckpt-00000007.json").write_text(json.dumps({"step": 7, "digest": "ab" * 32, "swarm_id": "00"}))

    async def serve(request_frames: bytes) -> bytes:
        sink = _Sink()
        await serve_checkpoint(served, _stream(request_frames), sink)
        return bytes(sink.data)

    async def go():
        dest = tmp_path / "incoming"
        full = await serve(_frames(pack({"step": 7})))
        cut = full[: len(full) // 2]  # the connection ends mid-transfer
        with pytest.raises(TransferCut) as first:
            await receive_checkpoint(_stream(cut), _Sink(), 7, dest)
        part = dest.with_name(dest.name + ".part")
        assert first.value.received == part.stat().st_size > 0 and data.startswith(part.read_bytes())
        request = _Sink()
        rest = await serve(_frames(pack({"offset": part.stat().st_size, "step": 7})))
        header = await receive_checkpoint(_stream(rest), request, 7, dest, resume=first.value.header)
        assert header["size"] == len(data) and dest.read_bytes() == data and not part.exists()
        assert unpack_canonical(bytes(request.data[8:]), 64, "request") == {"offset": first.value.received, "step": 7}
        # a resumed transfer whose header differs (another file) is refused and starts over
        part.write_bytes(data[:100])
        with pytest.raises(ProtocolError, match="changed"):
            await receive_checkpoint(_stream(rest), _Sink(), 7, dest, resume={**first.value.header, "size": 1})
        assert not part.exists()
        # offsets a server cannot honour
        for bad in ({"offset": 0, "step": 7}, {"offset": -1, "step": 7}, {"offset": "1", "step": 7}, {"offset": 1}):
            with pytest.raises(ProtocolError):
                await serve(_frames(pack(bad)))
        past = await serve(_frames(pack({"offset": len(data), "step": 7})))
        assert "error" in unpack_canonical(past[8:], 4096, "reply")

    asyncio.run(go())
