"""The swarm spec: everything replicas must agree on, content-addressed.

The swarm id is SHA-256 over ``SPEC_DOMAIN || canonical(spec)`` (canonical.py: msgpack,
map keys sorted at every level, floats as float64). A peer handed a spec and an id
recomputes the hash, so nobody can alter the recipe of a swarm without changing its id.

Every field has one type. JSON input may spell a float field as an integer (``"eps": 1``):
``from_dict`` widens it to a float *before* hashing, so ``1`` and ``1.0`` name the same
swarm. Canonical bytes must already hold floats: ``from_canonical`` rejects an integer in
a float field (it would not re-encode to the same bytes). Booleans are never integers.
SPEC.md section 4 lists every field with its type, default and validation.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .canonical import MAX_DEPTH, pack, unpack_canonical
from .codec import CODEC_NAME
from .distributions import DISTRIBUTIONS, RADEMACHER
from . import globs
from .errors import ProtocolError
from .identity import MAX_POW_BITS
from .pool import MAX_SEED_POOL
from .records import MAX_SAMPLES
from .schedule import LRSchedule

PROTOCOL_VERSION = 2
SPEC_DOMAIN = b"seedswarm/spec/v2\x00"
MAX_SPEC_BYTES = 32 * 1024
DTYPES = ("float32", "bfloat16", "float16")
ADMISSION_MODES = ("open", "members")
CLIP_RULES = ("none", "median", "redescend")
NORMALIZE_RULES = ("none", "rms")
#: Ranks of the low-rank perturbation (SPEC 5.1): 0 (elementwise z) or a power of 4, so that
#: 1/sqrt(rank) is a power of two and z stays exact.
PERTURBATION_RANKS = (0, 1, 4, 16, 64)
MAX_WINDOW = 64
MAX_SCALE = 1e3      # eps and weight_decay: far beyond any useful value, and never an infinite decay
MIN_CLIP = 1e-30     # the codec's smallest scale clip * 2**-64 stays a normal double
MAX_DELAY = 8


@dataclass(frozen=True)
class ModelRef:
    """Which base weights: a hub id or a name known to every peer, a revision and their digest."""

    id: str
    revision: str = ""
    digest: str = ""  # hex SHA-256 weight digest of the base model (see model/digest.py)
    dtype: str = "float32"


@dataclass(frozen=True)
class TaskRef:
    """The loss every peer optimises: a task kind and its JSON-like options."""

    kind: str
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CodecParams:
    name: str = CODEC_NAME
    clip: float = 1024.0


@dataclass(frozen=True)
class Admission:
    """Who may contribute records (and votes): ``open`` to anyone whose machine id carries
    ``pow_bits`` of proof of work for this swarm (0: free), or ``members`` whose machine id
    the swarm's ``authority`` (hex Ed25519 public key) has signed."""

    mode: str = "open"
    pow_bits: int = 0
    authority: str = ""


@dataclass(frozen=True)
class Aggregation:
    """The step rule: how the decoded gradients of one sealed step become update
    coefficients, computed identically by every replica from that step's records alone.

    With b = ``clip_factor`` times the step's lower-median gradient magnitude:
    ``"median"`` clips every gradient to [-b, b]; ``"redescend"`` keeps gradients within the
    bound and gives one beyond it the magnitude b*b/|g| (the further out, the less it counts:
    the largest byte a hostile peer can send counts almost nothing, and no gradient counts more
    than b); ``"none"`` applies gradients as decoded.

    Then ``normalize``: ``"rms"`` divides every (clipped) gradient of the step by the root mean
    square of them all (FZOO-style: the step's own spread sets the step size, so the lr is a
    step length, not a multiplier of a noisy gradient scale); ``"none"`` (the default) keeps
    them. An optional field: canonical bytes carry it only when it is not ``"none"``."""

    clip: str = "redescend"
    clip_factor: float = 2.0
    normalize: str = "none"


@dataclass(frozen=True)
class SwarmSpec:
    """The recipe of one swarm. Two peers with equal specs build identical replicas."""

    name: str
    model: ModelRef
    task: TaskRef
    trainable: tuple[str, ...] = ("*",)
    frozen: tuple[str, ...] = ()
    perturbation: str = RADEMACHER
    #: 0: every element's z drawn on its own (SPEC 5). r > 0: every 2-D trainable tensor's z is
    #: the rank-r sign matrix U V^T / sqrt(r) (LOZO-style, SPEC 5.1): a step explores an
    #: r-dimensional family of directions per matrix instead of all m*n at once. Optional field.
    perturbation_rank: int = 0
    #: 0: every sample has its own direction (SPEC 5). K > 0: a step's samples draw their
    #: directions from K per-step pool seeds (SPEC 5.2), so a sealed step of any number of records
    #: costs a replica at most K update terms. Optional field.
    seed_pool: int = 0
    eps: float = 1e-3
    lr: LRSchedule = field(default_factory=LRSchedule)
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = ("*bias", "*LayerNorm*", "*layer_norm*", "*norm.weight")
    codec: CodecParams = field(default_factory=CodecParams)
    aggregation: Aggregation = field(default_factory=Aggregation)
    admission: Admission = field(default_factory=Admission)
    samples_per_step: int = 1
    batch_size: int = 32
    digest_every: int = 10
    delay: int = 1
    late_window: int = 8
    future_window: int = 4
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    # --- identity -------------------------------------------------------------------------
    def canonical_bytes(self) -> bytes:
        return pack(self.to_dict())

    @property
    def swarm_id(self) -> bytes:
        return hashlib.sha256(SPEC_DOMAIN + self.canonical_bytes()).digest()

    @property
    def swarm_id_hex(self) -> str:
        return self.swarm_id.hex()

    @property
    def authority_key(self) -> bytes:
        return bytes.fromhex(self.admission.authority)

    # --- conversions ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The spec's canonical map: every field, except optional fields at their default."""
        d = asdict(self)
        for key in ("trainable", "frozen", "no_decay"):
            d[key] = list(d[key])
        for path, default in OPTIONAL_FIELDS.items():
            *parents, last = path
            level = d
            for key in parents:
                level = level[key]
            if level[last] == default and type(level[last]) is type(default):
                del level[last]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_model_digest(self, digest: str) -> "SwarmSpec":
        return replace(self, model=replace(self.model, digest=digest))

    @classmethod
    def from_dict(cls, data: Any) -> "SwarmSpec":
        """A spec from a JSON-like mapping; integer spellings of float fields are widened."""
        if not isinstance(data, dict):
            raise ProtocolError("a swarm spec must be a mapping")
        d = _fields_of(cls, data, "spec")
        for key in ("model", "task"):
            if key not in d:
                raise ProtocolError(f"spec.{key} is required")
        for key, kind in _NESTED.items():
            if key in d:
                d[key] = _build(kind, _fields_of(kind, d[key], f"spec.{key}"), f"spec.{key}")
        for key in ("trainable", "frozen", "no_decay"):
            if key in d:
                if type(d[key]) not in (list, tuple):
                    raise ProtocolError(f"spec.{key} must be a list of name patterns")
                d[key] = tuple(d[key])
        return _build(cls, d, "spec")

    @classmethod
    def from_json(cls, text: str | bytes) -> "SwarmSpec":
        if not isinstance(text, (str, bytes, bytearray)):
            raise ProtocolError(f"a swarm spec's JSON must be text, not {type(text).__name__}")
        try:
            data = json.loads(text, object_pairs_hook=_unique_keys)
        except (ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, an integer of > 4300 digits
            raise ProtocolError(f"swarm spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_canonical(cls, data: object, expected_id: bytes | None = None) -> "SwarmSpec":
        """Decode a spec fetched from a peer and check it against the id it was asked by."""
        obj = unpack_canonical(data, MAX_SPEC_BYTES, "swarm spec")
        spec = cls.from_dict(obj)
        if spec.canonical_bytes() != bytes(data):
            raise ProtocolError("swarm spec is not in canonical form (an integer in a float field?)")
        if expected_id is not None and spec.swarm_id != expected_id:
            raise ProtocolError("swarm spec does not hash to the requested swarm id")
        return spec


def _unique_keys(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ProtocolError(f"swarm spec JSON repeats a key: {sorted(k for k in keys if keys.count(k) > 1)[0]!r}")
    return dict(pairs)


def parse_swarm_id(text: str) -> bytes:
    text = text.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ProtocolError(f"swarm id must be 64 hex characters, got {text!r}")
    return raw


# --- field types --------------------------------------------------------------------------------
#: Fields added after protocol v2's first release, by path, with their defaults: a spec's
#: canonical map holds them only when set away from the default (SPEC.md 4.1), so the swarm
#: id of every spec that does not use them is what it was before they existed.
OPTIONAL_FIELDS: dict[tuple[str, ...], Any] = {
    ("aggregation", "normalize"): "none",
    ("perturbation_rank",): 0,
    ("seed_pool",): 0,
}
_NESTED = {"model": ModelRef, "task": TaskRef, "lr": LRSchedule, "codec": CodecParams,
           "aggregation": Aggregation, "admission": Admission}
#: Fields whose JSON spelling may be an integer: widened to float before hashing.
FLOAT_FIELDS = {
    SwarmSpec: ("eps", "weight_decay"), LRSchedule: ("base", "min_ratio"), CodecParams: ("clip",),
    Aggregation: ("clip_factor",),
}


def _fields_of(kind, value, where: str) -> dict:
    """The mapping ``value`` as keyword arguments of dataclass ``kind``: unknown fields are
    rejected, integer spellings of float fields widened, nothing else converted."""
    if isinstance(value, kind):
        return {f.name: getattr(value, f.name) for f in fields(kind)}
    if not isinstance(value, dict):
        raise ProtocolError(f"{where} must be a mapping")
    allowed = {f.name for f in fields(kind)}
    unknown = sorted(str(k) for k in value if k not in allowed)
    if unknown:
        raise ProtocolError(f"unknown field(s) in {where}: {', '.join(unknown)}")
    out = dict(value)
    for key in FLOAT_FIELDS.get(kind, ()):
        if key in out and type(out[key]) is int:
            try:
                out[key] = float(out[key])
            except OverflowError:
                raise ProtocolError(f"{where}.{key} is out of the float range") from None
    return out


def _build(kind, kwargs: dict, where: str):
    try:
        return kind(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ProtocolError(f"invalid {where}: {exc}") from None


# --- validation -------------------------------------------------------------------------------
def _json_like(obj: Any, where: str, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise ProtocolError(f"{where} nests deeper than {MAX_DEPTH} levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, str):
                raise ProtocolError(f"{where} maps must have string keys")
            _json_like(v, where, depth + 1)
    elif type(obj) is list:  # not a tuple: it would come back from the canonical bytes as a list
        for v in obj:
            _json_like(v, where, depth + 1)
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise ProtocolError(f"{where} floats must be finite")
    elif type(obj) is int:
        if not -(1 << 63) <= obj < (1 << 64):
            raise ProtocolError(f"{where} integers must fit in 64 bits")
    elif not (obj is None or isinstance(obj, (str, bool))):
        raise ProtocolError(f"{where} values must be JSON-like, not {type(obj).__name__}")


def _string(value: object, where: str, lo: int = 0, hi: int = 200) -> None:
    if type(value) is not str or not lo <= len(value) <= hi:
        raise ProtocolError(f"{where} must be a string of {lo}..{hi} characters")


def _float(value: object, where: str, lo: float = 0.0, positive: bool = False, hi: float = math.inf) -> None:
    if type(value) is not float or not math.isfinite(value) or value < lo or value > hi or (positive and value <= 0):
        bound = "a positive" if positive else f"a float in [{lo}, {hi}]"
        raise ProtocolError(f"{where} must be {bound} finite float")


def _int(value: object, where: str, lo: int, hi: int) -> None:
    if type(value) is not int or not lo <= value <= hi:
        raise ProtocolError(f"{where} must be an integer in {lo}..{hi}")


def _patterns(value: object, where: str) -> None:
    if type(value) is not tuple or len(value) > 256 or not all(type(p) is str and 0 < len(p) <= 200 for p in value):
        raise ProtocolError(f"{where} must be a list of at most 256 non-empty strings")
    for pattern in value:
        try:
            globs.parse(pattern)
        except ProtocolError as exc:
            raise ProtocolError(f"{where}: {exc}") from None


def _validate(s: SwarmSpec) -> None:
    _string(s.name, "spec.name", 1, 200)
    if type(s.model) is not ModelRef:
        raise ProtocolError("spec.model must be a mapping")
    _string(s.model.id, "spec.model.id", 1, 500)
    _string(s.model.revision, "spec.model.revision", 0, 200)
    _string(s.model.digest, "spec.model.digest", 0, 64)
    if s.model.digest and (len(s.model.digest) != 64 or any(c not in "0123456789abcdef" for c in s.model.digest)):
        raise ProtocolError("spec.model.digest must be empty or 64 lowercase hex characters")
    if s.model.dtype not in DTYPES:
        raise ProtocolError(f"spec.model.dtype must be one of {DTYPES}")
    if type(s.task) is not TaskRef:
        raise ProtocolError("spec.task must be a mapping")
    _string(s.task.kind, "spec.task.kind", 1, 200)
    if type(s.task.options) is not dict:
        raise ProtocolError("spec.task.options must be a mapping")
    _json_like(s.task.options, "spec.task.options", depth=2)  # spec -> task -> options
    for name in ("trainable", "frozen", "no_decay"):
        _patterns(getattr(s, name), f"spec.{name}")
    if not s.trainable:
        raise ProtocolError("spec.trainable must name at least one parameter pattern")
    if s.perturbation not in DISTRIBUTIONS:
        raise ProtocolError(f"spec.perturbation must be one of {DISTRIBUTIONS}")
    if type(s.perturbation_rank) is not int or s.perturbation_rank not in PERTURBATION_RANKS:
        raise ProtocolError(f"spec.perturbation_rank must be one of {PERTURBATION_RANKS}")
    if s.perturbation_rank and s.perturbation != RADEMACHER:
        raise ProtocolError("spec.perturbation_rank > 0 needs spec.perturbation = \"rademacher\" (exact sign factors)")
    _int(s.seed_pool, "spec.seed_pool", 0, MAX_SEED_POOL)
    _float(s.eps, "spec.eps", positive=True, hi=MAX_SCALE)
    if type(s.lr) is not LRSchedule:
        raise ProtocolError("spec.lr must be a mapping")
    _float(s.weight_decay, "spec.weight_decay", hi=MAX_SCALE)
    if type(s.codec) is not CodecParams or s.codec.name != CODEC_NAME:
        raise ProtocolError(f"spec.codec.name must be {CODEC_NAME!r}")
    _float(s.codec.clip, "spec.codec.clip", lo=MIN_CLIP, hi=1e30)
    if type(s.aggregation) is not Aggregation or s.aggregation.clip not in CLIP_RULES:
        raise ProtocolError(f"spec.aggregation.clip must be one of {CLIP_RULES}")
    _float(s.aggregation.clip_factor, "spec.aggregation.clip_factor", positive=True, hi=1e6)
    if s.aggregation.normalize not in NORMALIZE_RULES:
        raise ProtocolError(f"spec.aggregation.normalize must be one of {NORMALIZE_RULES}")
    a = s.admission
    if type(a) is not Admission or a.mode not in ADMISSION_MODES:
        raise ProtocolError(f"spec.admission.mode must be one of {ADMISSION_MODES}")
    _int(a.pow_bits, "spec.admission.pow_bits", 0, MAX_POW_BITS)
    _string(a.authority, "spec.admission.authority", 0, 64)
    if a.mode == "members":
        if len(a.authority) != 64 or any(c not in "0123456789abcdef" for c in a.authority):
            raise ProtocolError("a members-only swarm needs spec.admission.authority: 64 lowercase hex characters")
        if a.pow_bits:
            raise ProtocolError("spec.admission.pow_bits applies to open swarms only")
    elif a.authority:
        raise ProtocolError("spec.admission.authority applies to members-only swarms only")
    _int(s.samples_per_step, "spec.samples_per_step", 1, MAX_SAMPLES)
    _int(s.batch_size, "spec.batch_size", 1, 1 << 20)
    _int(s.digest_every, "spec.digest_every", 1, 1 << 20)
    _int(s.delay, "spec.delay", 0, MAX_DELAY)
    _int(s.late_window, "spec.late_window", 0, MAX_WINDOW)
    _int(s.future_window, "spec.future_window", s.delay + 2, MAX_WINDOW)
    if type(s.protocol_version) is not int or s.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(f"spec speaks protocol {s.protocol_version!r}; this peer speaks {PROTOCOL_VERSION}")
    # a spec must have canonical bytes, small enough for every peer to fetch
    try:
        size = len(s.canonical_bytes())
    except UnicodeEncodeError:
        raise ProtocolError("spec strings must be valid Unicode (no lone surrogates)") from None
    if size > MAX_SPEC_BYTES:
        raise ProtocolError(f"spec of {size} canonical bytes exceeds {MAX_SPEC_BYTES}")
