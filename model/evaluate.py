"""Held-out evaluation: mean loss and accuracy of a task over examples."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .tasks import Task


def evaluate(model: nn.Module, task: Task, examples: Sequence[dict], batch_size: int = 64) -> dict:
    """{"accuracy": percent, "loss": mean per example, "n": examples} (accuracy None if the task has none)."""
    total_loss, correct, counted = 0.0, 0, 0
    with torch.no_grad():
        for lo in range(0, len(examples), batch_size):
            chunk = examples[lo : lo + batch_size]
            batch = task.collate(chunk)
            if hasattr(task, "score"):
                loss, pred, target = task.score(model, batch)
                correct += int((pred == target).sum())
                counted += int(target.numel())
            else:
                loss = task.loss(model, batch)
            total_loss += float(loss) * len(chunk)
    n = len(examples)
    return {"accuracy": 100.0 * correct / counted if counted else None, "loss": total_loss / n if n else float("nan"), "n": n}
