"""Text statistics shared by the loop's health (``selfimprove.health``) and the proposals' (``selfimprove.proposals``):
n-gram diversity and repetition of generated texts. Pure functions, no imports from the package."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def _tokens(text: str) -> list[str]:
    words = text.split()
    return words if len(words) >= 2 else list(text.strip())


def distinct_n(texts: Sequence[str], n: int = 2) -> float | None:
    """Distinct n-grams over all n-grams of the texts (word n-grams; characters for one-word texts).

    >>> distinct_n(["a b c", "a b d"]), distinct_n(["12", "12"])
    (0.75, 0.5)
    """
    grams: list[tuple[str, ...]] = []
    for t in texts:
        toks = _tokens(t)
        grams += [tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repeats(text: str, n: int = 3, times: int = 3) -> bool:
    """Does some n-gram occur ``times`` times or more (a loop)?

    >>> repeats("the cat the cat the cat the cat"), repeats("one two three four five")
    (True, False)
    """
    toks = _tokens(text)
    counts = Counter(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    return bool(counts) and max(counts.values()) >= times
