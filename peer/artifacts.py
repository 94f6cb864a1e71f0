"""Files a swarm leaves behind: base models checked against the spec, replayed and saved models.

A saved model folder is a plain ``save_pretrained`` folder (loadable by transformers
alone) plus ``seedswarm.json`` (swarm id, spec, digest, steps) and, when known, the
ledger that produced it (``ledger.ssl``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from ..model.digest import weight_digest
from ..model.loading import load_model
from ..model.replica import replay
from ..model.tasks import build_task, task_model_class
from ..protocol.admission import check_records
from ..protocol.ledger import Ledger, LedgerCorrupt, decode_ledger, encode_ledger
from ..protocol.records import Record
from ..protocol.spec import SwarmSpec

LEDGER_NAME = "ledger.ssl"
META_NAME = "seedswarm.json"


class DigestMismatch(RuntimeError):
    """Weights that should equal the swarm's do not."""


def load_base(spec: SwarmSpec, model: str | None = None, device: str = "cpu", check_digest: bool = True):
    """(model, tokenizer, task) for a spec; ``model`` overrides where the weights come from.

    The weights must hash to ``spec.model.digest`` (when the spec names one): a peer
    with different base weights could never reproduce the swarm's replicas.
    """
    net, tokenizer = load_model(model or spec.model.id, task_model_class(spec.task), spec.model.revision, spec.model.dtype, device)
    if check_digest and spec.model.digest:
        digest = weight_digest(net)
        if digest != spec.model.digest:
            raise DigestMismatch(
                f"base weights from {model or spec.model.id!r} hash to {digest[:16]}..., but swarm "
                f"{spec.swarm_id_hex[:16]}... was started from {spec.model.digest[:16]}...: use the same model and revision"
            )
    return net, tokenizer, build_task(spec.task, tokenizer)


def read_ledger(path: str | os.PathLike, verify: bool = True) -> tuple[SwarmSpec, list[Record]]:
    """A ledger file's spec and records, every record checked (signature, sample count,
    ticket) unless ``verify`` is off. Damage in the middle of the file raises LedgerCorrupt
    naming the file and the offsets; a torn tail is ignored."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ledger file {str(path)!r} does not exist")
    try:
        spec, records, _torn = decode_ledger(path.read_bytes())
    except LedgerCorrupt as exc:
        raise LedgerCorrupt(str(path), exc.damage, exc.recovered) from None
    if verify:
        check_records(spec, records)
    return spec, records


def replay_ledger(ledger: str | os.PathLike, base: str | None = None, device: str = "cpu"):
    """Base weights + a verified ledger -> (model, tokenizer, spec, records). Duplicates and
    equivocations are resolved by the ledger's set semantics (SPEC section 10.2)."""
    spec, records = read_ledger(ledger)
    net, tokenizer, _task = load_base(spec, base, device)
    replay(net, spec, Ledger(records))
    return net, tokenizer, spec, records


def save_model_folder(
    out: str | os.PathLike, model: nn.Module, tokenizer, spec: SwarmSpec, records: list[Record] | None = None, **meta
) -> str:
    """save_pretrained + tokenizer + seedswarm.json (+ ledger). Returns the weight digest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    digest = weight_digest(model)
    model.save_pretrained(out)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    info = {"swarm_id": spec.swarm_id_hex, "digest": digest, "spec": spec.to_dict(), **meta}
    if records is not None:
        (out / LEDGER_NAME).write_bytes(encode_ledger(spec, Ledger(records).ordered()))
        info["records"] = len(records)
        info["steps"] = max((r.step for r in records), default=-1) + 1
    (out / META_NAME).write_text(json.dumps(info, indent=2, sort_keys=True))
    _usual_modes(out)
    return digest


def _usual_modes(folder: Path) -> None:
    """transformers writes model.safetensors through a private temporary file (mode 0600): give
    every file the mode a plain write gets (0644 under the usual umask 022), like the others."""
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():
        if path.is_file():
            path.chmod(0o666 & ~umask)
