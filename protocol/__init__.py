"""seedswarm's wire contract: pure Python, no torch.

A compatible peer in any language needs only this package and ``SPEC.md``: seed
derivation (hashing, seed pools), the perturbation bits (distributions), the one-byte codec, signed
records and votes (identity, records, messages), the swarm spec, the step rule
(aggregation) and the ledger's set semantics and file format.
"""

from .aggregation import UpdateTerm, step_gradients, step_terms
from .codec import decode as decode_gradients
from .codec import encode as encode_gradients
from .distributions import DISTRIBUTIONS, GAUSSIAN, RADEMACHER, z_value
from .errors import ProtocolError
from .hashing import derive_seed, mix64, stream64, tensor_id, tensor_key
from .identity import Signer, check_machine_id, machine_id
from .pool import direction_seed, pool_index, pool_seed
from .ledger import Ledger, LedgerCorrupt, LedgerFile, decode_ledger, encode_ledger, scan_ledger
from .records import Record, decode_record
from .schedule import LRSchedule
from .spec import (PROTOCOL_VERSION, Admission, Aggregation, CodecParams, ModelRef, SwarmSpec, TaskRef,
                   parse_swarm_id)

__all__ = [
    "DISTRIBUTIONS", "GAUSSIAN", "PROTOCOL_VERSION", "RADEMACHER",
    "Admission", "Aggregation", "CodecParams", "LRSchedule", "Ledger", "LedgerCorrupt", "LedgerFile", "ModelRef",
    "ProtocolError", "Record", "Signer", "SwarmSpec", "TaskRef", "UpdateTerm",
    "check_machine_id", "decode_gradients", "decode_ledger", "decode_record", "derive_seed", "direction_seed", "encode_gradients",
    "encode_ledger", "machine_id", "mix64", "parse_swarm_id", "pool_index", "pool_seed", "scan_ledger", "step_gradients", "step_terms",
    "stream64", "tensor_id", "tensor_key", "z_value",
]
