"""The math on tensors: perturbations, the SPSA estimator, replicas and replay, tasks and loading."""

from .data import BatchStream, DataError, SentimentData, read_jsonl, sentiment_data, sentiment_examples, shard, split, write_jsonl
from .digest import weight_digest
from .evaluate import evaluate
from .loading import BUNDLED_ID, ModelLoadError, load_model, load_saved
from .perturb import Term, apply, apply_reference, z_reference
from .replica import LocalStep, Replica, replay
from .tasks import PRESETS, Task, build_task, register_task, task_model_class
from .zo import ZerothOrder, select_parameters

__all__ = [
    "BUNDLED_ID", "PRESETS", "BatchStream", "DataError", "LocalStep", "ModelLoadError", "Replica", "Task", "Term",
    "ZerothOrder", "apply", "apply_reference", "build_task", "evaluate", "load_model", "load_saved", "read_jsonl",
    "register_task", "replay", "select_parameters", "SentimentData", "sentiment_data", "sentiment_examples", "shard", "split", "task_model_class",
    "weight_digest", "write_jsonl", "z_reference",
]
