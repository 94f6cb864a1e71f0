"""Shared fixtures: tiny random transformers with the bundled tokenizer, and specs."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch
import transformers

from seedswarm.model.data import sentiment_examples, shard, split, write_jsonl
from seedswarm.model.loading import bundled_path
from seedswarm.model.tasks import PRESETS
from seedswarm.protocol import CodecParams, LRSchedule, ModelRef, SwarmSpec

transformers.utils.logging.set_verbosity_error()


@pytest.fixture(scope="session")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(bundled_path())


def tiny_bert(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64)
    return transformers.BertModel(config).eval()


def tiny_causal(arch: str = "gpt2", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if arch == "gpt2":
        config = transformers.GPT2Config(vocab_size=30522, n_embd=32, n_layer=2, n_head=2, n_positions=64)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def make_spec(**overrides) -> SwarmSpec:
    fields = dict(
        name="test", model=ModelRef("tiny-bert"), task=PRESETS["sentiment"],
        lr=LRSchedule(base=1e-3), codec=CodecParams(clip=64.0), eps=1e-3,
    )
    fields.update(overrides)
    return SwarmSpec(**fields)


TEXTS = [
    {"text": f"The movie was {w}.", "label": int(l)}
    for w, l in [("great", 1), ("awful", 0), ("fine", 1), ("boring", 0), ("superb", 1), ("dull", 0), ("lovely", 1), ("bad", 0)]
]


@pytest.fixture(scope="session")
def tiny_swarm(tmp_path_factory):
    """For real peer processes: a tiny model folder (random BERT + the bundled tokenizer), a
    swarm spec using it (spec.json), three disjoint data shards (data{0,1,2}.jsonl) and a
    held-out file (test.jsonl)."""
    import dataclasses

    from seedswarm.peer.demo import default_spec

    root = tmp_path_factory.mktemp("swarm")
    tiny_bert().save_pretrained(root / "tiny")
    transformers.AutoTokenizer.from_pretrained(bundled_path()).save_pretrained(root / "tiny")
    train, test = split(sentiment_examples())
    for i in range(3):
        write_jsonl(root / f"data{i}.jsonl", shard(train, i, 3))
    write_jsonl(root / "test.jsonl", test[:300])
    spec = dataclasses.replace(default_spec(model=str(root / "tiny"), lr=1e-3), digest_every=5, batch_size=16, name="test")
    (root / "spec.json").write_text(spec.to_json())
    return root
