"""The ``seedswarm`` command: a thin layer over the Python API.

    seedswarm eval    --model M --task T --data F.jsonl [--json]
    seedswarm replay  --ledger F --out DIR [--base M]
    seedswarm digest  DIR
    seedswarm data    sentiment --out DIR
    seedswarm peer | bootstrap | status | swarms | demo   (see --help of each)

Errors in what the user passed are reported as ``seedswarm <cmd>: error: ...`` naming
the flag, with exit status 2; nothing is half-written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
import json
import os
import sys

LOG_LEVEL_ENV = "SEEDSWARM_LOG_LEVEL"


class UsageError(Exception):
    """A bad command-line value; the message names the flag and the fix."""


def _task_ref(text: str):
    """--task: a preset name, a task kind, inline JSON, or a JSON file of {"kind", "options"}."""
    from ..model.tasks import _FACTORIES, PRESETS
    from ..protocol.spec import TaskRef

    if text in PRESETS:
        return PRESETS[text]
    if text in _FACTORIES:
        return TaskRef(text, {})
    raw = text
    if os.path.isfile(text):
        with open(text, encoding="utf-8") as f:
            raw = f.read()
    try:
        obj = json.loads(raw)
        return TaskRef(obj["kind"], dict(obj.get("options", {})))
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            f"--task {text!r}: expected a preset ({', '.join(PRESETS)}), a task kind ({', '.join(_FACTORIES)}), "
            'or JSON like {"kind": "label-prompts", "options": {...}}'
        ) from None


def _phases():
    """Progress of a command's slow phases on stderr (stdout carries its result)."""
    from .progress import Phases

    return Phases(out=sys.stderr)


def cmd_eval(args) -> int:
    from ..model import evaluate, load_model, read_jsonl
    from ..model.tasks import build_task, task_labels, task_model_class

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    ref = _task_ref(args.task)
    read_jsonl(args.data)  # a bad file fails before the model loads
    with _phases() as show:
        show.phase("load model", args.model or "the bundled all-MiniLM-L6-v2")
        model, tokenizer = load_model(args.model, task_model_class(ref))
        task = build_task(ref, tokenizer)
        examples = read_jsonl(args.data, labels=task_labels(task))
        show.phase("evaluate", f"{len(examples)} examples of {args.data}")
        result = evaluate(model, task, examples, args.batch_size)
    if args.json:
        print(json.dumps(result))
    else:
        acc = "n/a" if result["accuracy"] is None else f"{result['accuracy']:.2f}%"
        print(f"accuracy {acc}  loss {result['loss']:.4f}  n {result['n']}")
    return 0


def cmd_replay(args) -> int:
    from .artifacts import replay_ledger, save_model_folder

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    with _phases() as show:
        show.phase("replay", f"load the base weights, check their digest, apply the records of {args.ledger}")
        model, tokenizer, spec, records = replay_ledger(args.ledger, args.base)
        show.phase("save", f"{args.out}/ (save_pretrained + ledger)")
        digest = save_model_folder(args.out, model, tokenizer, spec, records)
    print(json.dumps({"out": str(args.out), "digest": digest, "records": len(records), "swarm_id": spec.swarm_id_hex}) if args.json
          else f"replayed {len(records)} records of swarm {spec.swarm_id_hex[:16]}... into {args.out}\ndigest {digest}")
    return 0


def cmd_digest(args) -> int:
    from ..model import load_saved, weight_digest

    with _phases() as show:
        show.phase("digest", f"load {args.folder} and hash its weights")
        digest = weight_digest(load_saved(args.folder))
    print(digest)
    return 0


def cmd_data(args) -> int:
    from ..model.data import sentiment_data, write_jsonl

    if not 0.0 < args.test_fraction < 1.0:
        raise UsageError("--test-fraction must be between 0 and 1 (exclusive)")
    if not args.min_rating >= 0.0:
        raise UsageError("--min-rating must be >= 0")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file; give a folder (it is created if missing)")
    data = sentiment_data(args.min_rating, args.test_fraction)
    train, test = data.train, data.test
    if not train or not test:
        raise UsageError(f"--min-rating {args.min_rating} leaves too few examples to split")
    try:
        write_jsonl(out / "train.jsonl", train)
        write_jsonl(out / "test.jsonl", test)
        write_jsonl(out / "unseen.jsonl", data.unseen)
    except OSError as exc:
        raise UsageError(f"--out {args.out!r}: cannot write ({exc.strerror or exc})") from None
    print(f"wrote {len(train)} training, {len(test)} held-out and {len(data.unseen)} out-of-template examples to "
          f"{args.out}/{{train,test,unseen}}.jsonl")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seedswarm", description="Decentralized zeroth-order fine-tuning, one byte per gradient.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("eval", help="accuracy and loss of a model on a JSONL file")
    p.add_argument("--model", default=None, help="hub id or folder (default: the bundled all-MiniLM-L6-v2)")
    p.add_argument("--task", default="sentiment", help="preset, task kind, or JSON task (default: sentiment)")
    p.add_argument("--data", required=True, help='JSONL with {"text": ..., "label": ...} per line')
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true", help='print {"accuracy", "loss", "n"}')
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("replay", help="rebuild a model from base weights and a ledger")
    p.add_argument("--ledger", required=True, help="ledger file (ledger.ssl)")
    p.add_argument("--out", required=True, help="folder for the save_pretrained model")
    p.add_argument("--base", default=None, help="where to load the base weights (default: the spec's model id)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("digest", help="weight digest of a saved model folder")
    p.add_argument("folder")
    p.set_defaults(func=cmd_digest)

    p = sub.add_parser("data", help="write the bundled sentiment task as train/test/unseen (out-of-template) JSONL")
    p.add_argument("name", choices=["sentiment"])
    p.add_argument("--out", required=True)
    p.add_argument("--min-rating", type=float, default=1.0, help="keep words with |mean rating| >= this")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.set_defaults(func=cmd_data)

    from . import commands  # the networked commands (hivemind)

    commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries()
    from ..model.data import DataError
    from ..model.loading import ModelLoadError
    from ..protocol.errors import ProtocolError
    from .artifacts import DigestMismatch
    from .identity import IdentityError

    try:
        _network_defaults(args)
        return args.func(args) or 0
    except UsageError as exc:
        parser.exit(2, f"seedswarm {args.command}: error: {exc}\n")
    except (DataError, ModelLoadError, ProtocolError, DigestMismatch, IdentityError, FileNotFoundError, ValueError) as exc:
        parser.exit(2, f"seedswarm {args.command}: error: {exc}\n")
    except OSError as exc:  # a folder where a file should be, no permission, a full disk, ...
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        parser.exit(2, f"seedswarm {args.command}: error: {exc.strerror or exc}{where}\n")
    except KeyboardInterrupt:
        print(f"seedswarm {args.command}: stopped", file=sys.stderr)
        return 130


def _network_defaults(args) -> None:
    """--initial-peers and --relays not given: from the environment or the config file
    (peer/netconfig.py), so that a public swarm's bootstrap list is set once."""
    from .netconfig import NetConfigError, resolve

    for name in ("initial_peers", "relays"):
        if hasattr(args, name):
            try:
                value, _ = resolve(name, getattr(args, name))
            except NetConfigError as exc:
                raise UsageError(str(exc)) from None
            setattr(args, name, value)


def _quiet_libraries() -> None:
    """transformers' weight-loading progress bars and hub warnings would drown our output."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import transformers

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except Exception:
        pass


if __name__ == "__main__":
    # run the package's module, not this file's __main__ copy: the commands raise the package's
    # UsageError, which only the package's main() catches
    from seedswarm.peer.cli import main as package_main

    sys.exit(package_main())
