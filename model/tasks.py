"""Tasks: how a batch of examples becomes a loss (and, for classification, predictions).

Built-in kinds (``spec.task.kind``):

- ``label-prompts`` (encoders): embed texts and one prompt per label with the same model
  (mean pooling), logits = scale * cosine(text, prompt); cross-entropy over labels.
  The default sentiment task uses this with "This is negative." / "This is positive.".
- ``label-words`` (causal LMs, MeZO-style): the logits of each label's word at the end of
  a prompt template; cross-entropy over the label words only.
- ``causal-lm``: next-token cross-entropy on the text; accuracy is next-token top-1.

Anything else: ``register_task(kind, factory)`` on every peer, or pass a ``Task`` object
(any ``collate``/``loss`` pair) directly when embedding seedswarm in Python.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..protocol.spec import TaskRef
from .data import check_label
from .zo import PairedLoss

ENCODER, CAUSAL = "encoder", "causal"


class Task(Protocol):
    kind: str
    model_class: str  # ENCODER or CAUSAL: which transformers Auto class loads the model

    def collate(self, examples: Sequence[dict]) -> Any: ...

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor: ...

    def score(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predictions, targets) from one forward, for evaluation (optional)."""
        ...

    def paired(self, model: nn.Module, batch: Any) -> PairedLoss:
        """The loss of the batch under +eps and -eps from one forward over it doubled (optional:
        without it each SPSA estimate takes two forwards)."""
        ...


def _label_index(label, names: Sequence[str]) -> int:
    return check_label(label, names, "example")


def task_labels(task) -> Sequence[str] | None:
    """A classification task's label names (every example needs one); None otherwise."""
    labels = getattr(task, "labels", None)
    return list(labels) if labels else None


def _upcast(logits: torch.Tensor) -> torch.Tensor:
    """Losses in at least float32 (half-precision logits would swamp eps-sized differences)."""
    return logits if logits.dtype == torch.float64 else logits.float()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _on_device(enc: dict, model: nn.Module) -> dict:
    dev = _device(model)
    return {k: v.to(dev) for k, v in enc.items()}


def _doubled(enc: dict) -> dict:
    """The model inputs twice over along the batch: the two halves of a paired forward."""
    return {k: torch.cat([v, v]) for k, v in enc.items()}


class _ClassifierLosses:
    """loss / paired / score of a classification task, given how it runs the model
    (``_output``: the tensor it reads) and how it turns that into class logits (``_head``)."""

    def _output(self, model, enc) -> torch.Tensor:
        raise NotImplementedError

    def _head(self, out: torch.Tensor, enc: dict, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, model, batch):
        enc = _on_device(batch["enc"], model)
        return self._head(self._output(model, enc), enc, batch)

    def loss(self, model, batch):
        return F.cross_entropy(_upcast(self.logits(model, batch)), batch["labels"].to(_device(model)))

    def paired(self, model, batch) -> PairedLoss:
        enc = _on_device(batch["enc"], model)
        rows = enc["input_ids"].shape[0]
        labels = batch["labels"].to(_device(model))

        def losses():
            out = self._output(model, _doubled(enc))
            return tuple(F.cross_entropy(_upcast(self._head(o, enc, batch)), labels) for o in (out[:rows], out[rows:]))

        return PairedLoss(losses, rows)

    def score(self, model, batch):
        logits = _upcast(self.logits(model, batch))
        return F.cross_entropy(logits, batch["labels"].to(logits.device)), logits.argmax(-1).cpu(), batch["labels"]


@dataclass
class LabelPromptTask(_ClassifierLosses):
    tokenizer: Any
    prompts: Sequence[str] = ("This is negative.", "This is positive.")
    labels: Sequence[str] = ("negative", "positive")
    scale: float = 20.0
    max_length: int = 64
    kind: str = "label-prompts"
    model_class: str = ENCODER

    def collate(self, examples):
        # Texts and prompts go through the model in ONE forward, so a perturbed forward
        # regenerates each perturbed weight once, not twice.
        texts = [e["text"] for e in examples] + list(self.prompts)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        labels = torch.tensor([_label_index(e.get("label"), self.labels) for e in examples])
        return {"enc": dict(enc), "labels": labels, "n": len(examples)}

    def _output(self, model, enc):
        return model(**enc).last_hidden_state

    def _head(self, hidden, enc, batch):
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        emb = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)
        n = batch["n"]
        return self.scale * emb[:n] @ emb[n:].T


@dataclass
class LabelWordTask(_ClassifierLosses):
    tokenizer: Any
    template: str = "{text} It was"
    words: Sequence[str] = (" terrible", " great")
    labels: Sequence[str] = ("negative", "positive")
    max_length: int = 128
    kind: str = "label-words"
    model_class: str = CAUSAL

    def __post_init__(self):
        ids = [self.tokenizer(w, add_special_tokens=False)["input_ids"] for w in self.words]
        if any(not i for i in ids):
            raise ValueError(f"label words {list(self.words)} must each tokenize to at least one token")
        self.word_ids = torch.tensor([i[0] for i in ids])
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def collate(self, examples):
        texts = [self.template.format(text=e["text"]) for e in examples]
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        labels = torch.tensor([_label_index(e.get("label"), self.labels) for e in examples])
        return {"enc": dict(enc), "labels": labels}

    def _output(self, model, enc):
        return model(**enc).logits

    def _head(self, out, enc, batch):
        last = enc["attention_mask"].sum(1) - 1
        final = out[torch.arange(out.shape[0], device=out.device), last]
        return final[:, self.word_ids.to(out.device)]


@dataclass
class CausalLMTask:
    tokenizer: Any
    max_length: int = 256
    kind: str = "causal-lm"
    model_class: str = CAUSAL

    def __post_init__(self):
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def collate(self, examples):
        enc = self.tokenizer([e["text"] for e in examples], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        labels = enc["input_ids"].clone()
        labels[enc["attention_mask"] == 0] = -100
        return {"enc": dict(enc), "labels": labels}

    def _forward(self, model, batch):
        enc = _on_device(batch["enc"], model)
        return _upcast(model(**enc).logits[:, :-1]), batch["labels"][:, 1:].to(_device(model))

    @staticmethod
    def _loss_from(logits, targets):
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)

    def loss(self, model, batch):
        return self._loss_from(*self._forward(model, batch))

    def paired(self, model, batch) -> PairedLoss:
        enc = _on_device(batch["enc"], model)
        rows = enc["input_ids"].shape[0]
        targets = batch["labels"][:, 1:].to(_device(model))

        def losses():
            logits = _upcast(model(**_doubled(enc)).logits[:, :-1])
            return self._loss_from(logits[:rows], targets), self._loss_from(logits[rows:], targets)

        return PairedLoss(losses, rows)

    def score(self, model, batch):
        logits, targets = self._forward(model, batch)
        loss = self._loss_from(logits, targets)
        keep = targets != -100
        return loss, logits.argmax(-1)[keep].cpu(), targets[keep].cpu()


_FACTORIES: dict[str, Callable[..., Task]] = {
    "label-prompts": LabelPromptTask,
    "label-words": LabelWordTask,
    "causal-lm": CausalLMTask,
}

#: Named presets for the CLI's --task.
PRESETS: dict[str, TaskRef] = {
    "sentiment": TaskRef("label-prompts", {"prompts": ["This is negative.", "This is positive."], "labels": ["negative", "positive"], "scale": 20.0}),
    "sentiment-lm": TaskRef("label-words", {"template": "{text} It was", "words": [" terrible", " great"], "labels": ["negative", "positive"]}),
    "causal-lm": TaskRef("causal-lm", {}),
}


def register_task(kind: str, factory: Callable[..., Task]) -> None:
    """Make ``kind`` usable in swarm specs: ``factory(tokenizer, **options)`` returns a Task."""
    _FACTORIES[kind] = factory


def task_model_class(ref: TaskRef) -> str:
    factory = _FACTORIES.get(ref.kind)
    if factory is None:
        raise ValueError(f"unknown task kind {ref.kind!r}; known: {sorted(_FACTORIES)}")
    return getattr(factory, "model_class", ENCODER)


def build_task(ref: TaskRef, tokenizer) -> Task:
    factory = _FACTORIES.get(ref.kind)
    if factory is None:
        raise ValueError(f"unknown task kind {ref.kind!r}; known: {sorted(_FACTORIES)} (or register_task)")
    try:
        return factory(tokenizer, **ref.options)
    except TypeError as exc:
        raise ValueError(f"bad options for task {ref.kind!r}: {exc}") from None
