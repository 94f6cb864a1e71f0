"""seedswarm protocol version 2, implemented from protocol/SPEC.md alone.

Section numbers in comments refer to SPEC.md. Nothing here imports seedswarm; errors are
``Invalid`` (the spec's "one error"). Only the standard library and ``cryptography``.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class Invalid(Exception):
    """Anything a decoder or validator of the spec must reject."""


M64 = (1 << 64) - 1

# --- 1. hashing -----------------------------------------------------------------------------
SEED, TENSOR, CODEC = b"seedswarm/seed/v1\0", b"seedswarm/tensor/v1\0", b"seedswarm/codec/v1\0"
SPEC, RECORD, VOTE = b"seedswarm/spec/v2\0", b"seedswarm/record/v2\0", b"seedswarm/vote/v2\0"
MEMBER, POW, DHT = b"seedswarm/member/v2\0", b"seedswarm/pow/v2\0", b"seedswarm/dht/v2\0"
POOL_INDEX, POOL_SEED = b"seedswarm/pool-index/v2\0", b"seedswarm/pool-seed/v2\0"
GOLDEN = 0x9E3779B97F4A7C15


def mix64(z: int) -> int:
    z &= M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def stream64(key: int, n: int) -> int:
    return mix64((key + (n + 1) * GOLDEN) & M64)


def blake2b64(domain: bytes, data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(domain + data, digest_size=8).digest(), "little")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- 2. machine ids and signatures -----------------------------------------------------------
PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def machine_of_seed(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, machine id) of a 32-byte Ed25519 private key seed."""
    pub = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return pub, PREFIX + pub


def sign(seed: bytes, message: bytes) -> bytes:
    return Ed25519PrivateKey.from_private_bytes(seed).sign(message)


P = 2**255 - 19
D = -121665 * pow(121666, P - 2, P) % P
SMALL_ORDER = {bytes.fromhex(x) for x in (  # section 2, step 3
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
)}


def _y_sign(enc: bytes) -> tuple[int, int]:
    v = int.from_bytes(enc, "little")
    return v & ((1 << 255) - 1), v >> 255


def good_key(k: bytes) -> bool:
    """Section 2 steps 1-3: a canonical encoding of a point of large order."""
    y, sign = _y_sign(k)
    if y >= P:
        return False
    u, v = (y * y - 1) % P, (D * y * y + 1) % P
    x = u * pow(v, 3, P) * pow(u * pow(v, 7, P), (P - 5) // 8, P) % P
    if v * x * x % P == u % P:
        pass
    elif v * x * x % P == (-u) % P:
        x = x * pow(2, (P - 1) // 4, P) % P
    else:
        return False
    if x == 0 and sign == 1:
        return False
    return k not in SMALL_ORDER


def valid_machine(m: object) -> bool:
    return type(m) is bytes and len(m) == 38 and m[:6] == PREFIX and good_key(m[6:])


def verify(pub: bytes, message: bytes, signature: object) -> bool:
    if type(signature) is not bytes or len(signature) != 64:
        return False
    if _y_sign(signature[:32])[0] >= P or signature[:32] in SMALL_ORDER:  # R (section 2)
        return False
    try:
        Ed25519PublicKey.from_public_bytes(pub).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


# --- 3. canonical msgpack ---------------------------------------------------------------------
MAX_DEPTH = 16


def pack(v, depth: int = 0) -> bytes:
    if depth > MAX_DEPTH:
        raise Invalid("too deep")
    if v is None:
        return b"\xc0"
    if v is True:
        return b"\xc3"
    if v is False:
        return b"\xc2"
    if type(v) is int:
        if 0 <= v <= 127:
            return bytes([v])
        if 128 <= v <= 0xFF:
            return b"\xcc" + struct.pack(">B", v)
        if 0 <= v <= 0xFFFF:
            return b"\xcd" + struct.pack(">H", v)
        if 0 <= v <= 0xFFFFFFFF:
            return b"\xce" + struct.pack(">I", v)
        if 0 <= v <= M64:
            return b"\xcf" + struct.pack(">Q", v)
        if -32 <= v < 0:
            return struct.pack(">b", v)
        if -128 <= v < 0:
            return b"\xd0" + struct.pack(">b", v)
        if -(1 << 15) <= v < 0:
            return b"\xd1" + struct.pack(">h", v)
        if -(1 << 31) <= v < 0:
            return b"\xd2" + struct.pack(">i", v)
        if -(1 << 63) <= v < 0:
            return b"\xd3" + struct.pack(">q", v)
        raise Invalid("integer out of range")
    if type(v) is float:
        return b"\xcb" + struct.pack(">d", v)
    if type(v) is str:
        b = _utf8(v)
        n = len(b)
        head = bytes([0xA0 | n]) if n <= 31 else _len_head(n, 0xD9, 0xDA, 0xDB)
        return head + b
    if type(v) is bytes:
        return _len_head(len(v), 0xC4, 0xC5, 0xC6) + v
    if type(v) in (list, tuple):
        n = len(v)
        head = bytes([0x90 | n]) if n <= 15 else _len_head(n, None, 0xDC, 0xDD)
        return head + b"".join(pack(x, depth + 1) for x in v)
    if type(v) is dict:
        if not all(type(k) is str for k in v):
            raise Invalid("map keys must be strings")
        n = len(v)
        head = bytes([0x80 | n]) if n <= 15 else _len_head(n, None, 0xDE, 0xDF)
        keys = sorted(v, key=_utf8)  # by UTF-8 bytes (section 3)
        return head + b"".join(pack(k, depth + 1) + pack(v[k], depth + 1) for k in keys)
    raise Invalid(f"cannot encode {type(v).__name__}")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise Invalid("not UTF-8 encodable") from None


def _len_head(n: int, c8, c16, c32) -> bytes:
    if c8 is not None and n <= 0xFF:
        return bytes([c8, n])
    if n <= 0xFFFF:
        return bytes([c16]) + struct.pack(">H", n)
    return bytes([c32]) + struct.pack(">I", n)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.d, self.p = data, 0

    def take(self, n: int) -> bytes:
        if self.p + n > len(self.d):
            raise Invalid("truncated")
        out = self.d[self.p:self.p + n]
        self.p += n
        return out

    def u(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def s(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big", signed=True)

    def value(self, depth: int):
        if depth > MAX_DEPTH:
            raise Invalid("too deep")
        b = self.u(1)
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 256
        if 0x80 <= b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if 0x90 <= b <= 0x9F:
            return [self.value(depth + 1) for _ in range(b & 0x0F)]
        if 0xA0 <= b <= 0xBF:
            return self.text(b & 0x1F)
        simple = {0xC0: None, 0xC2: False, 0xC3: True}
        if b in simple:
            return simple[b]
        if b in (0xC4, 0xC5, 0xC6):
            return self.take(self.u({0xC4: 1, 0xC5: 2, 0xC6: 4}[b]))
        if b == 0xCA:
            return struct.unpack(">f", self.take(4))[0]
        if b == 0xCB:
            return struct.unpack(">d", self.take(8))[0]
        if 0xCC <= b <= 0xCF:
            return self.u(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return self.s(1 << (b - 0xD0))
        if b in (0xD9, 0xDA, 0xDB):
            return self.text(self.u({0xD9: 1, 0xDA: 2, 0xDB: 4}[b]))
        if b in (0xDC, 0xDD):
            return [self.value(depth + 1) for _ in range(self.u(2 if b == 0xDC else 4))]
        if b in (0xDE, 0xDF):
            return self.map(self.u(2 if b == 0xDE else 4), depth)
        raise Invalid(f"msgpack type 0x{b:02x} is not allowed")  # ext types, 0xc1

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("invalid UTF-8") from None

    def map(self, n: int, depth: int) -> dict:
        out = {}
        for _ in range(n):
            k = self.value(depth + 1)
            if type(k) is not str:
                raise Invalid("map key is not a string")
            out[k] = self.value(depth + 1)
        return out


def unpack(data: object, limit: int):
    """Decode untrusted canonical msgpack (section 3)."""
    if type(data) is not bytes:
        raise Invalid("not bytes")
    if len(data) > limit:
        raise Invalid("too large")
    r = _Reader(data)
    v = r.value(0)
    if r.p != len(data):
        raise Invalid("trailing bytes")
    if pack(v) != data:
        raise Invalid("not canonical")
    return v


# --- 4. the swarm spec ------------------------------------------------------------------------
REQ = object()
_STR, _INT, _FLOAT, _LIST, _MAP = "str", "int", "float", "list", "map"
NESTED = {
    "model": {"id": (_STR, REQ), "revision": (_STR, ""), "digest": (_STR, ""), "dtype": (_STR, "float32")},
    "task": {"kind": (_STR, REQ), "options": (_MAP, {})},
    "lr": {"base": (_FLOAT, 0.0001), "kind": (_STR, "constant"), "warmup_steps": (_INT, 0), "total_steps": (_INT, 0),
           "min_ratio": (_FLOAT, 0.0)},
    "codec": {"name": (_STR, "int8-sr-pow2"), "clip": (_FLOAT, 1024.0)},
    "aggregation": {"clip": (_STR, "redescend"), "clip_factor": (_FLOAT, 2.0), "normalize": (_STR, "none")},
    "admission": {"mode": (_STR, "open"), "pow_bits": (_INT, 0), "authority": (_STR, "")},
}
TOP = {
    "name": (_STR, REQ), "model": ("nested", REQ), "task": ("nested", REQ), "trainable": (_LIST, ["*"]),
    "frozen": (_LIST, []), "perturbation": (_STR, "rademacher"), "perturbation_rank": (_INT, 0),
    "seed_pool": (_INT, 0), "eps": (_FLOAT, 0.001), "lr": ("nested", None),
    "weight_decay": (_FLOAT, 0.0), "no_decay": (_LIST, ["*bias", "*LayerNorm*", "*layer_norm*", "*norm.weight"]),
    "codec": ("nested", None), "aggregation": ("nested", None), "admission": ("nested", None),
    "samples_per_step": (_INT, 1), "batch_size": (_INT, 32), "digest_every": (_INT, 10), "delay": (_INT, 1),
    "late_window": (_INT, 8), "future_window": (_INT, 4), "protocol_version": (_INT, 2),
}


def _fill(fields: dict, given: object) -> dict:
    if type(given) is not dict:
        raise Invalid("a spec level must be a map")
    unknown = set(given) - set(fields)
    if unknown:
        raise Invalid(f"unknown fields {sorted(unknown)}")
    out = {}
    for key, (kind, default) in fields.items():
        if key in given:
            value = given[key]
        elif default is REQ:
            raise Invalid(f"missing {key}")
        elif kind == "nested":
            value = {}
        else:
            value = json.loads(json.dumps(default))  # a fresh copy
        if kind == "nested":
            value = _fill(NESTED[key], value)
        elif kind == _FLOAT and type(value) is int:  # widening (4.2)
            try:
                value = float(value)
            except OverflowError:
                raise Invalid("integer too large for a float field") from None
        out[key] = value
    return out


def _is_str(v, lo, hi):
    return type(v) is str and lo <= len(v) <= hi


def _is_int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def _is_float(v, lo=0.0, hi=math.inf, positive=False):
    return type(v) is float and math.isfinite(v) and lo <= v <= hi and (v > 0 or not positive)


def _json_like(v, depth=0):
    if type(v) is dict:
        return all(type(k) is str and _json_like(x) for k, x in v.items())
    if type(v) is list:
        return all(_json_like(x) for x in v)
    if type(v) is float:
        return math.isfinite(v)
    if type(v) is int:
        return -(1 << 63) <= v <= M64
    return v is None or type(v) in (bool, str)


def _hex64(v):
    return type(v) is str and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _patterns(v, lo):
    return type(v) is list and lo <= len(v) <= 256 and all(_is_str(p, 1, 200) and glob_valid(p) for p in v)


def validate(s: dict) -> None:
    m, t, lr, co, ag, ad = (s[k] for k in ("model", "task", "lr", "codec", "aggregation", "admission"))
    checks = [
        _is_str(s["name"], 1, 200), _is_str(m["id"], 1, 500), _is_str(m["revision"], 0, 200),
        m["digest"] == "" or _hex64(m["digest"]), m["dtype"] in ("float32", "bfloat16", "float16"),
        _is_str(t["kind"], 1, 200), type(t["options"]) is dict and _json_like(t["options"]),
        _patterns(s["trainable"], 1), _patterns(s["frozen"], 0), _patterns(s["no_decay"], 0),
        s["perturbation"] in ("rademacher", "gaussian"), _is_float(s["eps"], 0.0, 1000.0, positive=True),
        _is_float(lr["base"], 0.0, 1e6), lr["kind"] in ("constant", "linear", "cosine"),
        _is_int(lr["warmup_steps"], 0, 1 << 32), _is_int(lr["total_steps"], 0, 1 << 32),
        _is_float(lr["min_ratio"], 0.0, 1.0), _is_float(s["weight_decay"], 0.0, 1000.0),
        co["name"] == "int8-sr-pow2", _is_float(co["clip"], 1e-30, 1e30),
        ag["clip"] in ("none", "median", "redescend"), _is_float(ag["clip_factor"], 0.0, 1e6, positive=True),
        ag["normalize"] in ("none", "rms"),
        _is_int(s["perturbation_rank"], 0, 64) and s["perturbation_rank"] in (0, 1, 4, 16, 64),
        s["perturbation_rank"] == 0 or s["perturbation"] == "rademacher",
        _is_int(s["seed_pool"], 0, 65536),
        ad["mode"] in ("open", "members"), _is_int(ad["pow_bits"], 0, 32), type(ad["authority"]) is str,
        _is_int(s["samples_per_step"], 1, 1024), _is_int(s["batch_size"], 1, 1 << 20),
        _is_int(s["digest_every"], 1, 1 << 20), _is_int(s["delay"], 0, 8), _is_int(s["late_window"], 0, 64),
        _is_int(s["protocol_version"], 2, 2),
    ]
    if not all(checks):
        raise Invalid("a spec field is invalid")
    if lr["kind"] != "constant" and not lr["total_steps"] > lr["warmup_steps"]:
        raise Invalid("decaying lr needs total_steps > warmup_steps")
    if ad["mode"] == "members" and not (_hex64(ad["authority"]) and ad["pow_bits"] == 0):
        raise Invalid("members needs an authority and no pow")
    if ad["mode"] == "open" and ad["authority"] != "":
        raise Invalid("open takes no authority")
    if not _is_int(s["future_window"], s["delay"] + 2, 64):
        raise Invalid("future_window")


#: 4.1's optional fields: in the canonical map only when not at their default.
OPTIONAL = {("aggregation", "normalize"): "none", ("perturbation_rank",): 0, ("seed_pool",): 0}


def canonical_map(spec: dict) -> dict:
    """The filled spec without its optional fields that are at their default."""
    spec = {**spec, **{path[0]: dict(spec[path[0]]) for path in OPTIONAL if len(path) == 2}}
    for path, default in OPTIONAL.items():
        level = spec[path[0]] if len(path) == 2 else spec
        key = path[-1]
        if type(level[key]) is type(default) and level[key] == default:
            del level[key]
    return spec


def spec_canonical(spec: dict) -> bytes:
    data = pack(canonical_map(spec))
    if len(data) > 32768:
        raise Invalid("spec too large")
    return data


def spec_from_json(text: str) -> tuple[dict, bytes, bytes]:
    """(spec, canonical bytes, swarm id) of a JSON spec (4.2)."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_repeats)
    except ValueError:
        raise Invalid("not JSON") from None
    return spec_from_obj(obj)


def _no_repeats(pairs: list) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise Invalid("a JSON object repeats a key (4.2)")
    return out


def spec_from_obj(obj) -> tuple[dict, bytes, bytes]:
    spec = _fill(TOP, obj)
    validate(spec)
    data = spec_canonical(spec)
    return spec, data, sha256(SPEC + data)


def spec_from_canonical(data: bytes) -> tuple[dict, bytes]:
    spec, again, sid = spec_from_obj(unpack(data, 32768))
    if again != data:
        raise Invalid("spec bytes not canonical")
    return spec, sid


# --- 5. seeds and perturbations ----------------------------------------------------------------
def seed(swarm_id: bytes, machine: bytes, sample: int) -> int:
    assert 0 <= sample <= M64
    return blake2b64(SEED, swarm_id + struct.pack(">H", len(machine)) + machine + struct.pack("<Q", sample))


def pool_index(swarm_id: bytes, machine: bytes, sample: int, k: int) -> int:
    """5.2: the pool entry sample ``sample`` of ``machine`` probes, of K = k entries."""
    return blake2b64(POOL_INDEX, swarm_id + struct.pack(">H", len(machine)) + machine + struct.pack("<Q", sample)) % k


def pool_seed(swarm_id: bytes, step: int, k: int) -> int:
    return blake2b64(POOL_SEED, swarm_id + struct.pack("<Q", step) + struct.pack("<I", k))


def tensor_id(name: str) -> int:
    return blake2b64(TENSOR, name.encode("utf-8"))


def tensor_key(s: int, name: str) -> int:
    return mix64(s ^ tensor_id(name))


class Table:
    def __init__(self, path) -> None:
        data = open(path, "rb").read()
        if hashlib.sha256(data).hexdigest() != "87d2297bd6f503ad9b582cb87a6d8d21e20633747144ac688b90f4efcde6a2e8":
            raise Invalid("gaussian table corrupt")
        self.values = struct.unpack("<4096f", data)


def z(dist: str, key: int, i: int, table: Table | None = None) -> float:
    if dist == "rademacher":
        return -1.0 if (stream64(key, i >> 6) >> (i & 63)) & 1 else 1.0
    lane = (stream64(key, i >> 2) >> (16 * (i & 3) + 4)) & 0xFFF
    return table.values[lane]


def z_lowrank(key: int, shape: tuple[int, int], rank: int, i: int) -> float:
    """5.1: element i of an m x n tensor, z = sum_c U[a, c] V[b, c] * 2^(-log4 rank)."""
    m, n = shape
    a, b = i // n, i % n
    total = 0
    for c in range(rank):
        total += int(z("rademacher", key, a * rank + c)) * int(z("rademacher", key, (m + b) * rank + c))
    log4 = {1: 0, 4: 1, 16: 2, 64: 3}[rank]
    return math.ldexp(float(total), -log4)


def update_lowrank(values: list[float], shape: tuple[int, int], rank: int,
                   terms: list[tuple[int, float, float]]) -> list[float]:
    """10.5 with 5.1's z, float32 values of a whole m x n tensor in row-major order."""
    out = []
    for i, v in enumerate(values):
        for key, coef, decay in terms:
            v = f32(v * f32(decay))
            v = f32(v + f32(f32(coef) * z_lowrank(key, shape, rank, i)))
        out.append(v)
    return out


# --- 6. codec -----------------------------------------------------------------------------------
def decode_grads(codes: bytes, e: int, clip: float) -> list[float]:
    scale = math.ldexp(clip, -e)
    out = []
    for b in codes:
        q = b - 256 if b >= 128 else b
        if q == -128:
            raise Invalid("0x80")
        out.append((float(q) * scale) / 127.0)
    return out


def encode_grads(gs: list[float], seeds: list[int], clip: float) -> tuple[bytes, int]:
    if not all(math.isfinite(g) for g in gs):
        raise Invalid("non-finite gradient")
    peak = max(abs(g) for g in gs)
    e = 0
    while e < 64 and peak <= math.ldexp(clip, -(e + 1)):
        e += 1
    scale = math.ldexp(clip, -e)
    salt = blake2b64(CODEC, b"")
    out = bytearray()
    for g, s in zip(gs, seeds):
        x = min(max((g / scale) * 127.0, -127.0), 127.0)
        low = math.floor(x)
        u = (mix64(s ^ salt) >> 11) * 2.0**-53
        q = low + 1 if u < x - low else low
        out.append(min(max(q, -127), 127) % 256)
    return bytes(out), e


# --- 7. lr --------------------------------------------------------------------------------------
PI = struct.unpack(">d", bytes.fromhex("400921FB54442D18"))[0]


def cos_pi(t: float) -> float:
    sign = 1.0
    if t > 0.5:
        t, sign = 1.0 - t, -1.0
    p = PI * t
    x2 = p * p
    term, total = 1.0, 1.0
    for k in range(1, 16):
        term = (term * (-x2)) / float((2 * k - 1) * (2 * k))
        total = total + term
    return sign * total


def lr(sched: dict, step: int) -> float:
    base, kind, w, t, m = (sched[k] for k in ("base", "kind", "warmup_steps", "total_steps", "min_ratio"))
    if step < w:
        return (base * float(step + 1)) / float(w)
    if kind == "constant":
        return base
    p = 1.0 if step >= t else float(step - w) / float(t - w)
    f = 1.0 - p if kind == "linear" else 0.5 * (1.0 + cos_pi(p))
    return base * (m + (1.0 - m) * f)


def f32(x: float) -> float:
    try:
        return struct.unpack("<f", struct.pack("<f", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def f32_hex(x: float) -> str:
    return struct.pack("<f", x).hex()


# --- 8. records ---------------------------------------------------------------------------------
class Rec:
    def __init__(self, step, machine, scale_exp, grads, ticket, signature) -> None:
        self.step, self.machine, self.scale_exp = step, machine, scale_exp
        self.grads, self.ticket, self.signature = grads, ticket, signature
        self.body = pack([2, step, machine, scale_exp, grads, ticket])
        self.rid = sha256(self.body)[:16]

    def encode(self) -> bytes:
        return pack([2, self.step, self.machine, self.scale_exp, self.grads, self.ticket, self.signature])

    def signed_message(self, swarm_id: bytes) -> bytes:
        return RECORD + swarm_id + self.body


def make_record(seed32: bytes, swarm_id: bytes, step: int, scale_exp: int, grads: bytes, ticket: bytes = b"") -> Rec:
    _, machine = machine_of_seed(seed32)
    r = Rec(step, machine, scale_exp, grads, ticket, b"")
    r.signature = sign(seed32, r.signed_message(swarm_id))
    return r


def decode_record(data: object) -> Rec:
    v = unpack(data, 1211)
    if type(v) is not list or len(v) != 7 or type(v[0]) is not int or v[0] != 2:
        raise Invalid("not a v2 record array")
    _, step, machine, e, grads, ticket, sig = v
    if not (type(step) is int and 0 <= step <= M64):
        raise Invalid("step")
    if not valid_machine(machine):
        raise Invalid("machine")
    if not (type(e) is int and 0 <= e <= 64):
        raise Invalid("scale_exp")
    if not (type(grads) is bytes and 1 <= len(grads) <= 1024 and 0x80 not in grads):
        raise Invalid("grads")
    if not (type(ticket) is bytes and len(ticket) <= 64):
        raise Invalid("ticket")
    if not (type(sig) is bytes and len(sig) == 64):
        raise Invalid("signature")
    return Rec(step, machine, e, grads, ticket, sig)


def ticket_ok(spec: dict, swarm_id: bytes, machine: bytes, ticket: bytes) -> bool:
    ad = spec["admission"]
    if ad["mode"] == "members":
        return verify(bytes.fromhex(ad["authority"]), MEMBER + swarm_id + machine, ticket)
    if ad["pow_bits"] == 0:
        return ticket == b""
    if len(ticket) != 8:
        return False
    return leading_zero_bits(sha256(POW + swarm_id + machine + ticket)) >= ad["pow_bits"]


def leading_zero_bits(digest: bytes) -> int:
    return 256 - int.from_bytes(digest, "big").bit_length()


def admissible(spec: dict, swarm_id: bytes, r: Rec) -> bool:
    n = spec["samples_per_step"]
    return (len(r.grads) == n and r.step * n + n - 1 <= M64 and ticket_ok(spec, swarm_id, r.machine, r.ticket)
            and verify(r.machine[6:], r.signed_message(swarm_id), r.signature))


# --- 13. votes -----------------------------------------------------------------------------------
def vote_body(step, digest, revision, machine, ticket) -> bytes:
    return pack([2, step, digest, revision, machine, ticket])


def decode_vote(data: object) -> tuple:
    v = unpack(data, 256)
    if type(v) is not list or len(v) != 7 or type(v[0]) is not int or v[0] != 2:
        raise Invalid("not a v2 vote")
    _, step, digest, rev, machine, ticket, sig = v
    ok = (type(step) is int and 0 <= step <= M64 and type(digest) is bytes and len(digest) == 32
          and type(rev) is int and 0 <= rev <= M64 and valid_machine(machine)
          and type(ticket) is bytes and len(ticket) <= 64 and type(sig) is bytes and len(sig) == 64)
    if not ok:
        raise Invalid("vote field")
    return step, digest, rev, machine, ticket, sig


# --- 10.2 the ledger as a set -------------------------------------------------------------------
class LedgerSet:
    def __init__(self) -> None:
        self.rids: set[bytes] = set()
        self.slots: dict[tuple[int, bytes], list[Rec]] = {}

    def add(self, r: Rec) -> None:
        if r.rid in self.rids:
            return
        held = self.slots.setdefault((r.step, r.machine), [])
        if len(held) >= 2:
            return
        held.append(r)
        self.rids.add(r.rid)

    def equivocated(self, step: int, machine: bytes) -> bool:
        return len(self.slots.get((step, machine), ())) == 2

    def applicable(self, step: int) -> list[Rec]:
        """Records of ``step`` alone in their slot (an equivocation voids that slot only)."""
        out = [held[0] for (s, m), held in self.slots.items() if s == step and len(held) == 1]
        return sorted(out, key=lambda r: r.machine)


# --- 10.3 / 10.4 the step rule and terms ---------------------------------------------------------
def step_terms(spec: dict, swarm_id: bytes, records: list[Rec]) -> list[tuple[int, float, float]]:
    """(seed, coef, decay) of one step's applicable records (given in any order)."""
    records = sorted(records, key=lambda r: r.machine)
    clip = spec["codec"]["clip"]
    values = [decode_grads(r.grads, r.scale_exp, clip) for r in records]
    rule = spec["aggregation"]["clip"]
    if rule != "none" and values:
        mags = sorted(abs(g) for vs in values for g in vs)
        b = spec["aggregation"]["clip_factor"] * mags[(len(mags) - 1) // 2]

        def beyond(g: float) -> float:
            if rule == "median":
                return b if g > 0 else -b
            q = (b * b) / abs(g)
            return q if g > 0 else -q

        values = [[g if abs(g) <= b else beyond(g) for g in vs] for vs in values]
    if spec["aggregation"]["normalize"] == "rms":
        total = 0.0
        for vs in values:
            for g in vs:
                total += g * g
        s = math.sqrt(total / sum(len(vs) for vs in values)) if values else 0.0
        if s > 0:
            values = [[g / s for g in vs] for vs in values]
    n = spec["samples_per_step"]
    out = []
    if spec["seed_pool"] and records:  # 10.4, pooled swarms: one term per entry probed
        k_size, step = spec["seed_pool"], records[0].step
        rate = lr(spec["lr"], step)
        sums: dict[int, float] = {}
        for r, vs in zip(records, values):
            for j, g in enumerate(vs):
                k = pool_index(swarm_id, r.machine, r.step * n + j, k_size)
                sums[k] = sums[k] + g if k in sums else g
        for k in sorted(sums):
            decay = f32(1.0 - rate * spec["weight_decay"]) if not out else 1.0
            out.append((pool_seed(swarm_id, step, k), f32(-(rate * sums[k])), decay))
        return out
    for r, vs in zip(records, values):
        rate = lr(spec["lr"], r.step)
        decay = f32(1.0 - rate * spec["weight_decay"])
        for j, g in enumerate(vs):
            out.append((seed(swarm_id, r.machine, r.step * n + j), f32(-(rate * g)), decay))
    return out


# --- 10.5 update arithmetic ---------------------------------------------------------------------
def update(values: list[float], offset: int, dist: str, terms: list[tuple[int, float, float]],
           table: Table | None = None, dtype: str = "float32") -> list[float]:
    """terms: (tensor key, coef, decay) with float32 coef/decay; values of ``dtype`` (as
    floats); element i of the list is element offset + i of the tensor. bfloat16/float16
    values are rounded back to 16 bits after every term (10.5)."""
    back = {"float32": lambda x: x, "bfloat16": bf16, "float16": fp16}[dtype]
    out = []
    for i, v in enumerate(values):
        for key, coef, decay in terms:
            v = f32(v * f32(decay))
            v = f32(v + f32(f32(coef) * z(dist, key, offset + i, table)))
            v = back(v)
        out.append(v)
    return out


def bf16(x: float) -> float:
    """A float32 value rounded to bfloat16 (nearest, ties to even), as a float."""
    bits = struct.unpack("<I", struct.pack("<f", x))[0]
    if (bits & 0x7F800000) == 0x7F800000:  # inf stays inf (no NaN arises here)
        return x
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16  # may carry into inf: IEEE overflow
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def fp16(x: float) -> float:
    """A float32 value rounded to float16 (nearest, ties to even; overflow to infinity)."""
    try:
        return struct.unpack("<e", struct.pack("<e", x))[0]
    except OverflowError:
        return math.copysign(math.inf, x)


def bits16(x: float, dtype: str) -> int:
    if dtype == "float16":
        return struct.unpack("<H", struct.pack("<e", x))[0]
    return struct.unpack("<I", struct.pack("<f", x))[0] >> 16


def from_bits16(b: int, dtype: str) -> float:
    if dtype == "float16":
        return struct.unpack("<e", struct.pack("<H", b))[0]
    return struct.unpack("<f", struct.pack("<I", b << 16))[0]


# --- 10.1 patterns (appendix B) -------------------------------------------------------------------
_STAR, _ANY = object(), object()


def glob_parse(pat: str) -> list:
    """Tokens of a pattern; Invalid for an unclosed '[' or a reversed range (appendix B)."""
    out, i, n = [], 0, len(pat)
    while i < n:
        c = pat[i]
        if c == "*":
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
            i += 1
        elif c == "?":
            out.append(_ANY)
            i += 1
        elif c == "[":
            j = i + 1
            negate = j < n and pat[j] == "!"
            if negate:
                j += 1
            start = j
            if j < n and pat[j] == "]":
                j += 1
            while j < n and pat[j] != "]":
                j += 1
            if j >= n:
                raise Invalid("'[' never closed")
            body, members, k = pat[start:j], [], 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    if body[k] > body[k + 2]:
                        raise Invalid("reversed range")
                    members.append((body[k], body[k + 2]))
                    k += 3
                else:
                    members.append((body[k], body[k]))
                    k += 1
            out.append((negate, members))
            i = j + 1
        else:
            out.append(c)
            i += 1
    return out


def glob_valid(pat: str) -> bool:
    try:
        glob_parse(pat)
        return True
    except Invalid:
        return False


def _one(tok, ch: str) -> bool:
    if tok is _ANY:
        return True
    if type(tok) is str:
        return tok == ch
    neg, items = tok
    return any(lo <= ch <= hi for lo, hi in items) != neg


def glob_match(name: str, pat: str) -> bool:
    """Invalid for an invalid pattern."""
    reach = [True] + [False] * len(name)  # reach[j]: the first j characters can be matched so far
    for tok in glob_parse(pat):
        if tok is _STAR:
            seen = False
            for j in range(len(name) + 1):
                seen = seen or reach[j]
                reach[j] = seen
        else:
            reach = [False] + [reach[j] and _one(tok, name[j]) for j in range(len(name))]
    return reach[len(name)]


def trainable(spec: dict, name: str) -> bool:
    return any(glob_match(name, p) for p in spec["trainable"]) and not any(glob_match(name, p) for p in spec["frozen"])


def decays(spec: dict, name: str) -> bool:
    return not any(glob_match(name, p) for p in spec["no_decay"])


# --- 11. weight digest ------------------------------------------------------------------------
def weight_digest(tensors: list[tuple[str, str, tuple[int, ...], bytes]]) -> str:
    """tensors: (name, dtype spelling, shape, little-endian element bytes)."""
    h = hashlib.sha256()
    for name, dtype, shape, data in sorted(tensors, key=lambda t: t[0]):
        h.update(name.encode() + b"\0" + dtype.encode() + b"\0" + struct.pack("<I", len(shape)))
        h.update(b"".join(struct.pack("<Q", d) for d in shape) + data)
    return h.hexdigest()


# --- appendix A: the ledger file -------------------------------------------------------------------
HEADER = b"SSLEDGER\x02"


def _entry(data: bytes, pos: int, first: bool):
    if pos + 8 > len(data):
        return None
    length, crc = struct.unpack_from("<II", data, pos)
    end = pos + 8 + length
    if not 1 <= length <= 32768 or end > len(data):
        return None
    payload = data[pos + 8:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return (spec_from_canonical(payload) if first else decode_record(payload)), end
    except Invalid:
        return None


def ledger_entry(payload: bytes) -> bytes:
    return struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def parse_ledger(data: bytes) -> dict:
    """{spec, swarm_id, records, torn, damage: [(offset, length)]}."""
    if not data.startswith(HEADER):
        raise Invalid("bad ledger header")
    first = _entry(data, len(HEADER), True)
    if first is None:
        raise Invalid("bad spec entry")
    (spec, sid), pos = first
    out = {"spec": spec, "swarm_id": sid, "records": [], "torn": 0, "damage": []}
    while pos < len(data):
        got = _entry(data, pos, False)
        if got is not None:
            out["records"].append(got[0])
            pos = got[1]
            continue
        p = next((p for p in range(pos + 1, len(data)) if _entry(data, p, False) is not None), None)
        if p is None:
            out["torn"] = len(data) - pos
            break
        out["damage"].append((pos, p - pos))
        pos = p
    return out


# --- 14.4 DHT entries ----------------------------------------------------------------------------
def dht_message(key: str, owner: bytes, entry: bytes, expiration: float) -> tuple[bytes, bytes, bytes]:
    """(message to sign, subkey_ser, value_ser) of a seedswarm DHT entry."""
    key_id = hashlib.sha1(pack(key)).digest()
    subkey_ser = pack(b"[ss2:" + owner.hex().encode() + b"]")
    value_ser = pack(entry)
    inner = b"\x94" + pack(key_id) + pack(subkey_ser) + pack(value_ser) + b"\xcb" + struct.pack(">d", expiration)
    ext = (b"\xc7" + bytes([len(inner)]) if len(inner) <= 255 else b"\xc8" + struct.pack(">H", len(inner))) + b"\x40"
    return DHT + ext + inner, subkey_ser, value_ser


# --- 13. the tally (seedswarm's local policy, as SPEC section 13 describes it) ------------------
def tally(votes: dict, standing: dict, own_digest: bytes, me: bytes, cap: int = 16):
    """votes: machine -> digest (one admissible vote each); standing: machine -> standing.
    Returns (winner or None, heaviest weight, total, supporters of the heaviest, split,
    leader, supporters of the leader)."""
    weight_of = {m: min(standing.get(m, 0), cap) for m in votes if m != me}
    ballots = [(m, d, weight_of[m]) for m, d in votes.items() if m != me and weight_of[m] > 0]
    ballots.append((me, own_digest, max(min(standing.get(me, 0), cap), 1)))
    established = [(m, d) for m, d, w in ballots if w >= cap // 2]
    weights: dict[bytes, int] = {}
    for _, d, w in ballots:
        weights[d] = weights.get(d, 0) + w
    total = sum(weights.values())

    def supporters(digest):
        return [m for m, d, w in sorted(ballots, key=lambda b: (-b[2], b[0])) if d == digest and m != me]

    heaviest = max(weights, key=lambda d: (weights[d], d))
    n_est = {d: sum(1 for _, e in established if e == d) for d in weights}
    won = 2 * weights[heaviest] > total and (not established or 2 * n_est[heaviest] > len(established))
    if won:
        leader = heaviest
    elif established:
        smallest = {d: min(m for m, e in established if e == d) for d in weights if n_est[d]}
        leader = min(smallest, key=lambda d: (-n_est[d], smallest[d]))
    else:
        leader = heaviest
    return ((heaviest if won else None), weights[heaviest], total, supporters(heaviest), not won, leader,
            supporters(leader))
