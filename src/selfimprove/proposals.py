"""Model-written problems: the pure parts of the ``propose`` stage (no model, no I/O).

What: a round's proposer writes problems from prompts built of example problems (earlier accepted proposals first,
then seed problems from the problem set); each answer becomes a :class:`~selfimprove.types.Proposal` after

1. **validity**, by problem family (``ProblemSet.parse_proposal``): arithmetic and reasoning-gym expression tasks are
   labelled by *computing* the proposed expression (never by the model); code tasks are checked in the sandbox
   (``ProblemSet.check_proposals``: two runs agree, the tests call the function, the proposed reference passes,
   a mutated reference fails); free text is left to the round's majority vote (``label_source: vote``);
2. **length** (``propose.min_chars``/``max_chars``, Self-Instruct's too-short/too-long filter);
3. **novelty**: MinHash estimates of Jaccard similarity over character n-grams (``datasketch``'s ``MinHashLSH``
   finds the candidates in sub-linear time, then each candidate's estimate is compared with the threshold) against
   the seed problems, every earlier proposal and every evaluation problem, and against this round's accepted ones.
   Exact (normalised) matches count as similarity 1.0. MinHash over ROUGE-L (``rouge-score``): ROUGE-L compares
   pairs, O(proposals x references) with an LCS each, while an LSH index answers each query from a few buckets, and
   the evaluation sets here hold thousands of problems;
4. the **pass-rate band**, applied later by ``validate`` from the round's own samples (``band_of``).

``health`` turns a round's proposals into ``propose/*`` metrics: acceptance by reason, distinct-2 and
self-similarity of the accepted problems, their mean length and complexity (the drift signal: proposers drift to
long, complex problems), label sources; ``band_metrics`` the band's yield and the pass-rate histogram.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from selfimprove.types import Problem, Proposal

#: pass-rate histogram buckets (upper bounds, inclusive of 1.0 in the last)
HIST_EDGES = (0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class Parsed:
    """What a problem set made of one proposal's text: the problem (None if it did not parse), how its label was
    obtained, each validity check, the first failed check's reason, and its size."""

    problem: Problem | None
    label_source: str | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    reason: str | None = None
    complexity: float | None = None

    @classmethod
    def reject(cls, reason: str, **checks: bool) -> Parsed:
        return cls(None, None, {**checks}, reason)


def normalize(text: str) -> str:
    """Lower case, whitespace collapsed: what near-duplicate detection compares.

    >>> normalize("  What is 2 +\\n 3? ")
    'what is 2 + 3?'
    """
    return " ".join(text.lower().split())


def shingles(text: str, n: int) -> set[str]:
    """Character n-grams of the normalised text (the whole text when shorter than n).

    >>> sorted(shingles("12+34", 3))
    ['+34', '12+', '2+3']
    """
    t = normalize(text)
    return {t[i:i + n] for i in range(len(t) - n + 1)} or {t}


class NoveltyIndex:
    """Near-duplicate lookup over reference texts: MinHash LSH (``datasketch``) for candidates, then each candidate's
    MinHash Jaccard estimate; exact normalised matches score 1.0."""

    def __init__(self, threshold: float, ngram: int = 3, num_perm: int = 128):
        from datasketch import MinHashLSH

        self.threshold, self.ngram, self.num_perm = threshold, ngram, num_perm
        # LSH finds pairs above its threshold with high probability; query a little below and decide on the estimate
        self.lsh = MinHashLSH(threshold=max(0.05, threshold * 0.8), num_perm=num_perm)
        self.hashes: dict[str, Any] = {}
        self.exact: dict[str, str] = {}

    def _minhash(self, text: str) -> Any:
        return minhash(text, self.ngram, self.num_perm)

    def add(self, key: str, text: str) -> None:
        if key in self.hashes:
            return
        norm = normalize(text)
        self.exact.setdefault(norm, key)
        m = self._minhash(text)
        self.hashes[key] = m
        self.lsh.insert(key, m)

    def add_all(self, items: Iterable[tuple[str, str]]) -> None:
        for key, text in items:
            self.add(key, text)

    def nearest(self, text: str) -> tuple[float, str | None]:
        """(highest similarity to a reference, its key); (0.0, None) when nothing is near."""
        exact = self.exact.get(normalize(text))
        if exact is not None:
            return 1.0, exact
        m = self._minhash(text)
        best, key = 0.0, None
        for cand in sorted(self.lsh.query(m)):
            sim = m.jaccard(self.hashes[cand])
            if sim > best:
                best, key = sim, cand
        return best, key

    def __len__(self) -> int:
        return len(self.hashes)


def choose_examples(pool: Sequence[Problem], seeds: Sequence[Problem], shots: int, rng: random.Random) -> list[Problem]:
    """``shots`` example problems for one proposal prompt: earlier accepted proposals first (up to all but one of
    the shots while seeds remain, so the prompt stays anchored to the task), then seed problems.

    >>> p = [Problem(id=f"p{i}", prompt="x") for i in range(5)]; s = [Problem(id=f"s{i}", prompt="y") for i in range(5)]
    >>> [e.id[0] for e in choose_examples(p, s, 3, random.Random(0))]
    ['p', 'p', 's']
    """
    take_pool = min(len(pool), shots - 1 if seeds else shots)
    out = rng.sample(list(pool), take_pool) if take_pool else []
    rest = shots - len(out)
    if rest and seeds:
        out += rng.sample(list(seeds), min(rest, len(seeds)))
    return out


def band_of(rate: float, band: tuple[float, float]) -> str:
    """Where a pass rate falls against the band: 'in', 'too_easy' (above) or 'too_hard' (below).

    >>> band_of(0.5, (0.2, 0.8)), band_of(1.0, (0.2, 0.8)), band_of(0.0, (0.2, 0.8))
    ('in', 'too_easy', 'too_hard')
    """
    if rate > band[1] + 1e-12:
        return "too_easy"
    if rate < band[0] - 1e-12:
        return "too_hard"
    return "in"


def health(proposals: Sequence[Proposal], ngram: int = 3, num_perm: int = 128) -> dict[str, float]:
    """The round's ``propose/*`` metrics (see the module docstring)."""
    from selfimprove.textstats import distinct_n

    n = len(proposals)
    accepted = [p for p in proposals if p.accepted]
    out: dict[str, float] = {"propose/proposed": float(n), "propose/accepted": float(len(accepted)),
                             "propose/acceptance_rate": len(accepted) / n if n else 0.0}
    for reason, count in sorted(Counter(p.rejected_reason for p in proposals if not p.accepted).items()):
        out[f"propose/rejected/{reason}"] = float(count)
    for src, count in sorted(Counter(p.label_source for p in accepted if p.label_source).items()):
        out[f"propose/label_source/{src}"] = float(count)
    if accepted:
        texts = [problem_text(p.problem) for p in accepted if p.problem is not None]
        d2 = distinct_n(texts, 2)
        if d2 is not None:
            out["propose/distinct_2"] = d2
        out["propose/mean_length"] = sum(p.length for p in accepted) / len(accepted)
        sizes = [p.complexity for p in accepted if p.complexity is not None]
        if sizes:
            out["propose/mean_complexity"] = sum(sizes) / len(sizes)
        diffs = [p.difficulty for p in accepted if p.difficulty is not None]
        if diffs:
            out["propose/mean_difficulty"] = sum(diffs) / len(diffs)
        if len(texts) >= 2:
            out["propose/self_similarity"] = self_similarity(texts, ngram, num_perm)
    novel = [p.novelty for p in proposals if p.novelty is not None]
    if novel:
        out["propose/mean_novelty"] = sum(novel) / len(novel)
    return out


def minhash(text: str, ngram: int = 3, num_perm: int = 128) -> Any:
    """The MinHash (``datasketch``, fixed seed) of a text's character n-grams: what novelty and self-similarity
    compare."""
    from datasketch import MinHash

    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode() for s in sorted(shingles(text, ngram))])
    return m


def self_similarity(texts: Sequence[str], ngram: int = 3, num_perm: int = 128) -> float:
    """Mean, over the texts, of the highest MinHash Jaccard estimate to another text of the set (0: all distinct
    n-grams, 1: every text has a duplicate): the proposer's collapse onto a few problems.

    All pairs, one text's row against the stacked hash values at a time (``MinHash.jaccard`` is the share of equal
    hash values): the same numbers as pair by pair, without a Python call per pair (1500 texts on this machine: 1.1 s, against 4.1 s pair by pair).
    """
    import numpy as np

    table = np.stack([minhash(t, ngram, num_perm).hashvalues for t in texts])
    best = []
    for i in range(len(table)):
        shares = np.count_nonzero(table == table[i], axis=1) / np.float64(num_perm)
        shares[i] = -1.0
        best.append(float(shares.max()))
    return sum(best) / len(best)


def band_metrics(proposals: Sequence[Proposal]) -> dict[str, float]:
    """``proposals/*``: how this round's sampled proposals fell against the band, and their pass-rate histogram."""
    rated = [p for p in proposals if p.pass_rate is not None]
    if not rated:
        return {}
    counts = Counter(p.band for p in rated)
    out = {"proposals/sampled": float(len(rated)), "proposals/in_band": float(counts.get("in", 0)),
           "proposals/too_easy": float(counts.get("too_easy", 0)),
           "proposals/too_hard": float(counts.get("too_hard", 0)),
           "proposals/band_yield": counts.get("in", 0) / len(rated),
           "proposals/mean_pass_rate": sum(p.pass_rate or 0.0 for p in rated) / len(rated)}
    lo = 0.0
    for hi in HIST_EDGES:
        inside = sum(1 for p in rated if (lo <= (p.pass_rate or 0.0) < hi) or (hi == 1.0 and p.pass_rate == 1.0))
        out[f"proposals/pass_rate_hist/{lo:.1f}-{hi:.1f}"] = float(inside)
        lo = hi
    return out


def problem_text(problem: Problem) -> str:
    """The text a reader sees: the user message of a chat problem, else the prompt."""
    if problem.messages:
        users = [m["content"] for m in problem.messages if m.get("role") == "user"]
        if users:
            return users[-1]
    return problem.prompt


# --------------------------------------------------------------------------------- arithmetic expressions

_EXPR = re.compile(r"-?\d+(?:\s*[-+*]\s*-?\d+)+")


def find_expression(text: str) -> str | None:
    """The first integer expression with +, - or * in a text (None if none).

    >>> find_expression("Problem: State the final answer: 12 + 7 - 3 = ?"), find_expression("no numbers")
    ('12 + 7 - 3', None)
    """
    m = _EXPR.search(text)
    return m.group(0).strip() if m else None


def evaluate_expression(expr: str, max_terms: int = 12, max_digits: int = 12) -> int:
    """The value of an integer expression of +, - and * (Python's precedence), computed from its syntax tree:
    nothing else (no names, calls, division or powers) is accepted; ``ValueError`` says what was refused.

    >>> evaluate_expression("12 + 7 * 3 - -2"), evaluate_expression("4 - 1 - 7")
    (35, -4)
    """
    import ast

    try:
        tree = ast.parse(expr, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not an expression: {e.msg}") from None
    terms = 0

    def ev(node: ast.AST) -> int:
        nonlocal terms
        if isinstance(node, ast.Constant) and type(node.value) is int:
            terms += 1
            if terms > max_terms or len(str(abs(node.value))) > max_digits:
                raise ValueError("too many terms or digits")
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult)):
            a, b = ev(node.left), ev(node.right)
            return a + b if isinstance(node.op, ast.Add) else a - b if isinstance(node.op, ast.Sub) else a * b
        raise ValueError(f"{type(node).__name__} is not allowed")

    return ev(tree.body)


def operators(expr: str) -> set[str]:
    """The binary operators of an expression (a leading or doubled minus is a sign).

    >>> sorted(operators("4 - -1 + 7")), sorted(operators("-3 * 2"))
    (['+', '-'], ['*'])
    """
    return set(re.findall(r"(?<=\d)\s*([-+*])", expr))


def operand_digits(expr: str) -> list[int]:
    """Digits of each operand.

    >>> operand_digits("123 + -45")
    [3, 2]
    """
    return [len(x) for x in re.findall(r"\d+", expr)]


def reseed_expression(expr: str, rng: random.Random) -> str:
    """The expression with every operand replaced by a random one of as many digits (a valid, usually new,
    problem of the same shape: the scripted fake's "right" proposal).

    >>> reseed_expression("12 + 7", random.Random(0)) != "12 + 7"
    True
    """
    def repl(m: re.Match[str]) -> str:
        d = len(m.group(0))
        lo = 0 if d == 1 else 10 ** (d - 1)
        return str(rng.randint(lo, 10**d - 1))

    return re.sub(r"\d+", repl, expr)
