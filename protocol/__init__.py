"""seedswarm's wire contract: pure Python, no torch.

A compatible peer in any language needs only this package and ``SPEC.md``:
seed derivation (hashing), the perturbation bits (distributions), the one-byte
codec, records, the swarm spec and the ledger's canonical order.
"""

from .codec import decode as decode_gradients
from .codec import encode as encode_gradients
from .distributions import DISTRIBUTIONS, GAUSSIAN, RADEMACHER, z_value
from .errors import ProtocolError
from .hashing import derive_seed, mix64, stream64, tensor_id, tensor_key
from .ledger import Ledger, LedgerFile, decode_ledger, encode_ledger
from .records import Record, decode_record
from .schedule import LRSchedule
from .spec import PROTOCOL_VERSION, CodecParams, ModelRef, SwarmSpec, TaskRef, parse_swarm_id

__all__ = [
    "DISTRIBUTIONS", "GAUSSIAN", "PROTOCOL_VERSION", "RADEMACHER",
    "CodecParams", "LRSchedule", "Ledger", "LedgerFile", "ModelRef", "ProtocolError", "Record",
    "SwarmSpec", "TaskRef",
    "decode_gradients", "decode_ledger", "decode_record", "derive_seed", "encode_gradients",
    "encode_ledger", "mix64", "parse_swarm_id", "stream64", "tensor_id", "tensor_key", "z_value",
]
