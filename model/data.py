"""Data: JSONL files of {"text": ..., "label": ...}, the bundled sentiment set, splits and shards.

Splits and shards are decided by a hash of each example's text, not by position, so
every peer computes the same held-out set and disjoint private shards without
exchanging anything, whatever order the file lists examples in.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

Example = dict


class DataError(ValueError):
    """A data file that cannot be used, with the file and line that is wrong."""


def read_jsonl(path: str | os.PathLike, labels: Sequence[str] | None = None) -> list[Example]:
    """Examples of a JSONL file, each checked up front: with ``labels`` (a classification
    task's label names), every line needs a "label" that is one of them or its index. Any
    bad line is a DataError naming the file and the line, before anything trains on it."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {str(path)!r} is a folder; give a JSONL file")
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    examples = []
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError) as exc:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({getattr(exc, 'msg', exc)})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                    raise DataError(f'{path}:{lineno}: each line must be an object with a string "text"')
                if labels is not None:
                    check_label(obj.get("label"), labels, f"{path}:{lineno}")
                examples.append(obj)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not examples:
        raise DataError(f"data file {str(path)!r} has no examples")
    return examples


def check_label(label: object, names: Sequence[str], where: str) -> int:
    """The index of ``label`` among ``names`` (a name or an index), or DataError saying where."""
    if label is None:
        raise DataError(f'{where}: no "label" (this task needs one of {list(names)}, or its index 0..{len(names) - 1})')
    if type(label) is str:
        if label not in names:
            raise DataError(f"{where}: label {label!r} is not one of {list(names)}")
        return list(names).index(label)
    if type(label) is not int or not 0 <= label < len(names):
        raise DataError(f"{where}: label {label!r} is not one of {list(names)} nor an index 0..{len(names) - 1}")
    return label


def write_jsonl(path: str | os.PathLike, examples: Sequence[Example]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")


def text_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def split(examples: Sequence[Example], test_fraction: float = 0.2) -> tuple[list[Example], list[Example]]:
    """(train, test) by text hash: stable under reordering and identical on every peer."""
    cut = int(test_fraction * 10_000)
    train = [e for e in examples if text_hash(e["text"]) % 10_000 >= cut]
    test = [e for e in examples if text_hash(e["text"]) % 10_000 < cut]
    return train, test


def shard(examples: Sequence[Example], index: int, count: int) -> list[Example]:
    """The private shard of peer ``index`` of ``count`` (disjoint, covering, by text hash)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} outside 0..{count - 1}")
    return [e for e in examples if (text_hash(e["text"]) // 10_000) % count == index]


#: The phrasings the default task trains on (and its in-distribution held-out set uses). Several
#: subjects, tenses and word positions, so that what is learnt is the word's sentiment, not
#: one sentence.
TRAIN_TEMPLATES = (
    "The movie was {word}.",
    "I found the film {word}.",
    "Honestly, the acting felt {word}.",
    "The service at this restaurant is {word}.",
    "My week has been {word}.",
    "It is a {word} book.",
    "Our trip to the coast was {word}.",
    "{word}. That sums up the show.",
)
#: Phrasings never trained on: the out-of-template evaluation (with held-out words only).
UNSEEN_TEMPLATES = (
    "Everyone agreed the concert was {word}.",
    "What a {word} experience that turned out to be!",
    "The new phone is {word}, in my opinion.",
    "Reviewers called the hotel {word}.",
)


def sentiment_words(min_abs_rating: float = 1.0) -> list[tuple[str, int]]:
    """(word, label) for the VADER lexicon's alphabetic words with |mean rating| >= ``min_abs_rating``
    (label 1 if the rating is positive), in lexicon order.

    ~7,500 English words rated by 10 people from -4 to +4 ship with vaderSentiment."""
    import vaderSentiment

    lexicon = Path(vaderSentiment.__file__).with_name("vader_lexicon.txt")
    words = []
    for line in lexicon.read_text(encoding="utf-8").splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].isalpha():
            continue
        rating = float(fields[1])
        if abs(rating) >= min_abs_rating:
            words.append((fields[0], int(rating > 0)))
    return words


def render(word: str, template: str) -> str:
    """A template filled with a word (capitalised when the word opens the sentence)."""
    return template.format(word=word.capitalize() if template.startswith("{word}") else word)


def sentiment_examples(min_abs_rating: float = 1.0, template: str = "The movie was {word}.") -> list[Example]:
    """Every lexicon word (``sentiment_words``) in one template: the single-template set of
    protocol v2's first releases (tests and benchmarks that need a fixed, small task use it)."""
    return [{"text": render(w, template), "label": label} for w, label in sentiment_words(min_abs_rating)]


@dataclass(frozen=True)
class SentimentData:
    """The bundled task's three sets. Words are split, not sentences, so no held-out word is
    ever trained on in any template.

    - ``train``: every training word in every one of ``TRAIN_TEMPLATES``;
    - ``test`` (in-distribution held-out): every held-out word once, in one training template
      picked by a hash of the word;
    - ``unseen`` (out-of-template): every held-out word once, in one of ``UNSEEN_TEMPLATES``."""

    train: list[Example]
    test: list[Example]
    unseen: list[Example]


def sentiment_data(min_abs_rating: float = 1.0, test_fraction: float = 0.2) -> SentimentData:
    """The default task's data, identical on every peer (splits by word hash, as ``split``)."""
    words = sentiment_words(min_abs_rating)
    cut = int(test_fraction * 10_000)
    held = [(w, l) for w, l in words if text_hash(w) % 10_000 < cut]
    kept = [(w, l) for w, l in words if text_hash(w) % 10_000 >= cut]
    train = [{"text": render(w, t), "label": l} for w, l in kept for t in TRAIN_TEMPLATES]

    def once(templates: Sequence[str]) -> list[Example]:
        return [{"text": render(w, templates[(text_hash(w) // 10_000) % len(templates)]), "label": l} for w, l in held]

    return SentimentData(train, once(TRAIN_TEMPLATES), once(UNSEEN_TEMPLATES))


class BatchStream:
    """Endless shuffled minibatches of one peer's examples (epoch order from a local seed)."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seed: int = 0) -> None:
        if not examples:
            raise DataError("no training examples for this peer")
        self.examples = list(examples)
        self.batch_size = min(batch_size, len(self.examples))
        self._rng = np.random.default_rng(seed)
        self._order: list[int] = []

    def __iter__(self) -> Iterator[list[Example]]:
        return self

    def __next__(self) -> list[Example]:
        if len(self._order) < self.batch_size:
            self._order += self._rng.permutation(len(self.examples)).tolist()
        take, self._order = self._order[: self.batch_size], self._order[self.batch_size :]
        return [self.examples[i] for i in take]
