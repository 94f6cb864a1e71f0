"""Parameter-name patterns of a swarm spec (trainable, frozen, no_decay): a small glob language.

A pattern matches a whole parameter name (dots are ordinary characters), case-sensitively,
one Unicode code point at a time:

- ``*`` matches any run of characters, the empty one included;
- ``?`` matches exactly one character;
- ``[...]`` matches one character from a set and ``[!...]`` one character not in it; a set
  lists characters and ranges ``a-z`` (lo <= hi by code point); a ``]`` right after ``[`` or
  ``[!`` is a member, and so is a ``-`` first or last in the set;
- every other character matches itself.

Patterns that would mean different things to different glob implementations are refused by
``parse`` (so by spec validation): an unclosed ``[``, an empty set, a reversed range. On
every pattern ``parse`` accepts, this matcher agrees with Python's ``fnmatch.fnmatchcase``;
it is written out here so that what a swarm trains never depends on the Python it runs on.
"""

from __future__ import annotations

from functools import lru_cache

from .errors import ProtocolError

_STAR, _ANY = object(), object()


@lru_cache(maxsize=1024)
def parse(pattern: str) -> tuple:
    """The tokens of a pattern; ProtocolError for a pattern outside the language above."""
    if type(pattern) is not str or not pattern:
        raise ProtocolError("a name pattern is a non-empty string")
    tokens: list = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if not tokens or tokens[-1] is not _STAR:
                tokens.append(_STAR)
            i += 1
        elif ch == "?":
            tokens.append(_ANY)
            i += 1
        elif ch == "[":
            j = i + 1
            negate = j < n and pattern[j] == "!"
            j += negate
            start = j
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:
                raise ProtocolError(f"pattern {pattern!r}: '[' at {i} is never closed")
            body = pattern[start:j]
            if not body:
                raise ProtocolError(f"pattern {pattern!r}: an empty set at {i}")
            ranges, k = [], 0
            while k < len(body):
                if k + 2 < len(body) and body[k + 1] == "-":
                    lo, hi = body[k], body[k + 2]
                    if lo > hi:
                        raise ProtocolError(f"pattern {pattern!r}: reversed range {lo}-{hi}")
                    ranges.append((lo, hi))
                    k += 3
                else:
                    ranges.append((body[k], body[k]))
                    k += 1
            tokens.append((negate, tuple(ranges)))
            i = j + 1
        else:
            tokens.append(ch)
            i += 1
    return tuple(tokens)


def _one(token, ch: str) -> bool:
    if token is _ANY:
        return True
    if type(token) is str:
        return token == ch
    negate, ranges = token
    return any(lo <= ch <= hi for lo, hi in ranges) != negate


def match(name: str, pattern: str) -> bool:
    """Does ``pattern`` match the whole of ``name``? (linear time in both)"""
    reach = [True] + [False] * len(name)  # reach[j]: name[:j] is matched by the tokens so far
    for token in parse(pattern):
        if token is _STAR:
            seen = False
            for j in range(len(name) + 1):
                seen = seen or reach[j]
                reach[j] = seen
        else:
            reach = [False] + [reach[j] and _one(token, name[j]) for j in range(len(name))]
    return reach[len(name)]


def matches_any(name: str, patterns) -> bool:
    return any(match(name, p) for p in patterns)
