"""The swarm spec: everything replicas must agree on, content-addressed.

The swarm id is SHA-256 over ``SPEC_DOMAIN || canonical(spec)``, where
``canonical`` is msgpack with map keys sorted (recursively), floats as float64
and strings as UTF-8. A peer that is handed a spec and an id recomputes the
hash, so nobody can alter the recipe of a swarm without changing its id.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import msgpack

from .codec import CODEC_NAME
from .distributions import DISTRIBUTIONS, RADEMACHER
from .errors import ProtocolError
from .records import MAX_SAMPLES
from .schedule import LRSchedule

PROTOCOL_VERSION = 1
SPEC_DOMAIN = b"seedswarm/spec/v1\x00"
MAX_SPEC_BYTES = 32 * 1024
DTYPES = ("float32", "bfloat16", "float16")


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
class SwarmSpec:
    """The recipe of one swarm. Two peers with equal specs build identical replicas."""

    name: str
    model: ModelRef
    task: TaskRef
    trainable: tuple[str, ...] = ("*",)
    frozen: tuple[str, ...] = ()
    perturbation: str = RADEMACHER
    eps: float = 1e-3
    lr: LRSchedule = field(default_factory=LRSchedule)
    weight_decay: float = 0.0
    no_decay: tuple[str, ...] = ("*bias", "*LayerNorm*", "*layer_norm*", "*norm.weight")
    codec: CodecParams = field(default_factory=CodecParams)
    samples_per_step: int = 1
    batch_size: int = 32
    digest_every: int = 10
    protocol_version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _validate(self)

    # --- identity -------------------------------------------------------------------------
    def canonical_bytes(self) -> bytes:
        return msgpack.packb(_canonical(self.to_dict()), use_bin_type=True, use_single_float=False)

    @property
    def swarm_id(self) -> bytes:
        return hashlib.sha256(SPEC_DOMAIN + self.canonical_bytes()).digest()

    @property
    def swarm_id_hex(self) -> str:
        return self.swarm_id.hex()

    # --- conversions ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("trainable", "frozen", "no_decay"):
            d[key] = list(d[key])
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def with_model_digest(self, digest: str) -> "SwarmSpec":
        return replace(self, model=replace(self.model, digest=digest))

    @classmethod
    def from_dict(cls, data: Any) -> "SwarmSpec":
        if not isinstance(data, dict):
            raise ProtocolError("a swarm spec must be a mapping")
        d = dict(data)
        _reject_unknown("spec", d, {f for f in cls.__dataclass_fields__})
        try:
            model = _sub(ModelRef, d.pop("model", None), "model")
            task = _sub(TaskRef, d.pop("task", None), "task")
            lr = _sub(LRSchedule, d.pop("lr", {}), "lr", floats=("base", "min_ratio"))
            codec = _sub(CodecParams, d.pop("codec", {}), "codec", floats=("clip",))
            for key in ("trainable", "frozen", "no_decay"):
                if key in d:
                    if not isinstance(d[key], (list, tuple)):
                        raise ProtocolError(f"spec.{key} must be a list of name patterns")
                    d[key] = tuple(d[key])
            for key in ("eps", "weight_decay"):
                if key in d and type(d[key]) is int:
                    d[key] = float(d[key])
            return cls(model=model, task=task, lr=lr, codec=codec, **d)
        except TypeError as exc:
            raise ProtocolError(f"invalid swarm spec: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> "SwarmSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ProtocolError(f"swarm spec is not valid JSON: {exc}") from None
        return cls.from_dict(data)

    @classmethod
    def from_canonical(cls, data: bytes, expected_id: bytes | None = None) -> "SwarmSpec":
        """Decode a spec fetched from a peer and check it against the id it was asked by."""
        if not isinstance(data, (bytes, bytearray)) or len(data) > MAX_SPEC_BYTES:
            raise ProtocolError("swarm spec must be bytes of at most 32 KiB")
        try:
            obj = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
        except Exception as exc:
            raise ProtocolError(f"swarm spec is not valid msgpack: {exc}") from None
        spec = cls.from_dict(obj)
        if spec.canonical_bytes() != bytes(data):
            raise ProtocolError("swarm spec is not in canonical form")
        if expected_id is not None and spec.swarm_id != expected_id:
            raise ProtocolError("swarm spec does not hash to the requested swarm id")
        return spec


def parse_swarm_id(text: str) -> bytes:
    text = text.strip().lower()
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ProtocolError(f"swarm id must be 64 hex characters, got {text!r}")
    return raw


# --- helpers -----------------------------------------------------------------------------------
def _sub(kind, value, name, floats=()):
    if value is None:
        raise ProtocolError(f"spec.{name} is required")
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ProtocolError(f"spec.{name} must be a mapping")
    value = dict(value)
    _reject_unknown(f"spec.{name}", value, set(kind.__dataclass_fields__))
    for key in floats:
        if key in value and type(value[key]) is int:
            value[key] = float(value[key])
    try:
        return kind(**value)
    except TypeError as exc:
        raise ProtocolError(f"invalid spec.{name}: {exc}") from None


def _reject_unknown(where: str, d: dict, allowed: set[str]) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ProtocolError(f"unknown field(s) in {where}: {', '.join(map(str, unknown))}")


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise ProtocolError("spec maps must have string keys")
        return {k: _canonical(obj[k]) for k in sorted(obj)}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        raise ProtocolError("spec floats must be finite")
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ProtocolError(f"spec values must be JSON-like, not {type(obj).__name__}")


def _check_patterns(name: str, patterns: tuple) -> None:
    if not all(isinstance(p, str) and p for p in patterns):
        raise ProtocolError(f"spec.{name} must be a list of non-empty strings")


def _positive_float(name: str, value: object) -> None:
    if not (isinstance(value, float) and math.isfinite(value) and value > 0):
        raise ProtocolError(f"spec.{name} must be a positive finite float")


def _validate(s: SwarmSpec) -> None:
    if not isinstance(s.name, str) or not 0 < len(s.name) <= 200:
        raise ProtocolError("spec.name must be a string of 1..200 characters")
    if not isinstance(s.model, ModelRef) or not isinstance(s.model.id, str) or not s.model.id:
        raise ProtocolError("spec.model.id must be a non-empty string")
    if not isinstance(s.model.revision, str) or not isinstance(s.model.digest, str):
        raise ProtocolError("spec.model.revision and spec.model.digest must be strings")
    if s.model.digest and (len(s.model.digest) != 64 or any(c not in "0123456789abcdef" for c in s.model.digest)):
        raise ProtocolError("spec.model.digest must be 64 lowercase hex characters")
    if s.model.dtype not in DTYPES:
        raise ProtocolError(f"spec.model.dtype must be one of {DTYPES}")
    if not isinstance(s.task, TaskRef) or not isinstance(s.task.kind, str) or not s.task.kind:
        raise ProtocolError("spec.task.kind must be a non-empty string")
    if not isinstance(s.task.options, dict):
        raise ProtocolError("spec.task.options must be a mapping")
    _canonical(s.task.options)
    for name in ("trainable", "frozen", "no_decay"):
        _check_patterns(name, getattr(s, name))
    if not s.trainable:
        raise ProtocolError("spec.trainable must name at least one parameter pattern")
    if s.perturbation not in DISTRIBUTIONS:
        raise ProtocolError(f"spec.perturbation must be one of {DISTRIBUTIONS}")
    _positive_float("eps", s.eps)
    if not isinstance(s.lr, LRSchedule):
        raise ProtocolError("spec.lr must be an lr schedule")
    if not (isinstance(s.weight_decay, float) and math.isfinite(s.weight_decay) and s.weight_decay >= 0):
        raise ProtocolError("spec.weight_decay must be a finite non-negative float")
    if not isinstance(s.codec, CodecParams) or s.codec.name != CODEC_NAME:
        raise ProtocolError(f"spec.codec.name must be {CODEC_NAME!r}")
    _positive_float("codec.clip", s.codec.clip)
    for name, upper in (("samples_per_step", MAX_SAMPLES), ("batch_size", 1 << 20), ("digest_every", 1 << 20)):
        value = getattr(s, name)
        if type(value) is not int or not 1 <= value <= upper:
            raise ProtocolError(f"spec.{name} must be an integer in 1..{upper}")
    if s.protocol_version != PROTOCOL_VERSION:
        raise ProtocolError(f"spec speaks protocol {s.protocol_version!r}; this peer speaks {PROTOCOL_VERSION}")
