"""Synthetic multi-digit addition with a difficulty knob: the embedded default problem set (``arithmetic``).

Difficulty L means both operands have exactly L digits (for L = 1: 0..9, so 100 ordered pairs). Everything is
deterministic from the seed arguments. Evaluation problems never reach training: the problem space is split
once, by a stable hash of the *unordered* pair {a, b}, into an eval partition (share ``eval_fraction``) and a
train partition. ``eval_set`` draws only from the first; ``training_pool`` and ``labelled`` only from the
second, whatever the seeds. Because the key is unordered, the commuted view b+a of a training problem is a
training problem too, so label-free "views" cannot leak an eval answer either.

Model-facing text (the defaults; the prototype studies in ``notes/prototype*.md`` chose them):

* operands reversed, least-significant digit first: 123 + 456 -> prompt ``"321+654="``;
* the answer reversed with a fixed width of L+1 digits, the last one being the carry (0 or 1):
  579 -> ``"9750"``. A fixed width says how long the answer is; decode exactly that many tokens
  (``meta["min_new_tokens"] == meta["max_new_tokens"] == L+1``), because a model fine-tuned on one new length
  can learn to stop after that many digits at the next length (docs/recipe.md).

``Problem.prompt`` is exactly the text the model continues (the tokenizer adds BOS), ``Problem.answer``
exactly the gold completion (no EOS), and ``meta`` carries ``a``, ``b``, ``sum``, ``answer_regex`` (the
full-match format of a well-formed answer, for label-free format filters) and the decode lengths.

Small spaces: with L = 1 or 2 there are only 100 / 8100 ordered pairs. ``eval_set`` then returns every eval
problem of that difficulty when fewer than requested exist (no duplicates), ``training_pool`` returns at most
the number of distinct training problems, and ``labelled`` repeats training problems (ids suffixed
``/rep<k>``)
so a bootstrap mix keeps its requested share of each difficulty.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.problems.base import ProblemSet
from selfimprove.types import Problem

if TYPE_CHECKING:
    from selfimprove.proposals import Parsed

logger = logging.getLogger(__name__)

AnswerWidth = Literal["fixed", "natural"]
#: The longest additions a curriculum is offered (``difficulties``); longer ones need a longer max_new_tokens.
MAX_CURRICULUM_DIGITS = 20
#: Enumerate a difficulty's partition when it has at most this many ordered pairs; sample otherwise.
_ENUMERATE_MAX = 20_000


class ArithmeticConfig(Strict):
    """Synthetic addition; difficulty = digits per operand."""

    reverse: bool = Field(True, description="Write digits least-significant first (operands and answer).")
    answer_width: Literal["fixed", "natural"] = Field(
        "fixed", description="'fixed': the answer always has L+1 digits (leading carry 0/1); 'natural': no padding."
    )
    eval_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="Share of the problem space reserved for eval.")


def operand_range(digits: int) -> tuple[int, int]:
    """Inclusive range of L-digit operands (1 digit includes 0).

    >>> operand_range(1), operand_range(3)
    ((0, 9), (100, 999))
    """
    if digits < 1:
        raise ValueError(f"difficulty (digits) must be >= 1, got {digits}")
    return (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1


class ArithmeticProblems(ProblemSet):
    """Addition of two L-digit numbers; difficulty = L.

    Options: ``reverse`` (bool, default True) writes operands and answer least-significant digit first;
    ``answer_width`` (``"fixed"``: L+1 digits with a leading carry 0/1, or ``"natural"``: no leading zero);
    ``eval_fraction`` (share of unordered pairs reserved for evaluation, default 0.1); ``salt`` (changes the
    partition; keep the default so eval sets stay comparable across runs); ``default_difficulties`` and
    ``default_per_difficulty`` for :meth:`load`.
    """

    name: ClassVar[str] = "arithmetic"
    default_verifier: ClassVar[str] = "exact_match"

    def __init__(
        self,
        *,
        reverse: bool = True,
        answer_width: AnswerWidth = "fixed",
        eval_fraction: float = 0.1,
        salt: str = "selfimprove/arithmetic/v1",
        default_difficulties: list[int] | None = None,
        default_per_difficulty: int = 500,
        **options: Any,
    ):
        super().__init__(**options)
        if answer_width not in ("fixed", "natural"):
            raise ValueError(f"answer_width must be 'fixed' or 'natural', got {answer_width!r}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        self.reverse = reverse
        self.answer_width: AnswerWidth = answer_width
        self.eval_fraction = eval_fraction
        self.salt = salt
        self.default_difficulties = default_difficulties or [1, 2, 3, 4, 5, 6]
        self.default_per_difficulty = default_per_difficulty

    # ----------------------------------------------------------------- partition and formatting
    def is_eval_pair(self, a: int, b: int) -> bool:
        """True if (a, b) is in the evaluation partition. Symmetric in a and b; independent of any seed."""
        lo, hi = (a, b) if a <= b else (b, a)
        h = hashlib.blake2b(f"{self.salt}/{lo}+{hi}".encode(), digest_size=8).digest()
        return int.from_bytes(h, "big") / 2**64 < self.eval_fraction

    def format_prompt(self, a: int, b: int) -> str:
        """The text the model continues, e.g. ``"321+654="`` for 123 + 456 (reversed)."""
        sa, sb = str(a), str(b)
        if self.reverse:
            sa, sb = sa[::-1], sb[::-1]
        return f"{sa}+{sb}="

    def format_answer(self, total: int, digits: int) -> str:
        """The gold completion of an L-digit problem, e.g. ``"9750"`` for 579, L = 3 (fixed, reversed)."""
        s = str(total).zfill(digits + 1) if self.answer_width == "fixed" else str(total)
        return s[::-1] if self.reverse else s

    def answer_regex(self, digits: int) -> str:
        """Full-match regex of a well-formed answer at difficulty L (a superset of the correct answers).

        >>> ArithmeticProblems().answer_regex(3)
        '[0-9]{3}[01]'
        """
        if self.answer_width == "fixed":
            return f"[0-9]{{{digits}}}[01]" if self.reverse else f"[01][0-9]{{{digits}}}"
        return f"[0-9]{{{digits}}}1?" if self.reverse else f"1?[0-9]{{{digits}}}"

    def parse_answer(self, text: str, digits: int) -> int | None:
        """The integer an answer text denotes, or None if it is not well formed (for views and reports)."""
        if not re.fullmatch(self.answer_regex(digits), text):
            return None
        return int(text[::-1] if self.reverse else text)

    def make_problem(self, a: int, b: int, digits: int, split: str, suffix: str = "") -> Problem:
        total = a + b
        answer = self.format_answer(total, digits)
        return Problem(
            id=f"{self.name}/{split}/{digits}/{a}+{b}{suffix}",
            prompt=self.format_prompt(a, b),
            answer=answer,
            difficulty=digits,
            verifier=self.default_verifier,
            source=self.name,
            meta={
                "a": a,
                "b": b,
                "sum": total,
                "answer_regex": self.answer_regex(digits),
                "max_new_tokens": digits + 1,
                # Fixed width: the format fixes the length, so samplers need not trust the model to stop.
                "min_new_tokens": digits + 1 if self.answer_width == "fixed" else digits,
            },
        )

    # ------------------------------------------------------------------ model-written problems (propose)
    # The tiny model writes digits only (its vocabulary and training are digits after "a+b="), so its proposal is
    # the second operand of a new problem whose first operand comes from an example problem: the model continues
    # "<a>+" with L digits. The label is computed from the operands, never read from the model.

    def proposal_prompt(self, examples: list[Problem], index: int, rng: random.Random) -> Problem:
        parent = examples[0]
        a, digits = int(parent.meta["a"]), int(parent.difficulty or 1)
        sa = str(a)[::-1] if self.reverse else str(a)
        return Problem(id=f"propose/{index}", prompt=f"{sa}+", answer=self.reference_proposal(examples, rng),
                       source=self.name, meta={"parents": [parent.id], "a": a, "difficulty": digits,
                                               "max_new_tokens": digits, "min_new_tokens": digits})

    def reference_proposal(self, examples: list[Problem], rng: random.Random) -> str | None:
        parent = examples[0]
        a, digits = int(parent.meta["a"]), int(parent.difficulty or 1)
        lo, hi = operand_range(digits)
        for _ in range(100):
            b = rng.randint(lo, hi)
            if not self.is_eval_pair(a, b):
                return str(b)[::-1] if self.reverse else str(b)
        return None

    def parse_proposal(self, text: str, examples: list[Problem], round: int) -> Parsed:
        from selfimprove.proposals import Parsed

        parent = examples[0]
        a, digits = int(parent.meta["a"]), int(parent.difficulty or 1)
        body = text.strip()[:digits]
        if len(body) < digits or not body.isdigit():
            return Parsed.reject("malformed", parsed=False)
        b = int(body[::-1] if self.reverse else body)
        if digits > 1 and b < 10 ** (digits - 1):  # a leading zero: a shorter operand than the difficulty says
            return Parsed.reject("wrong_difficulty", parsed=True, difficulty=False)
        if self.is_eval_pair(a, b):  # the evaluation partition: never trained on, whoever proposed it
            return Parsed.reject("eval_problem", parsed=True, difficulty=True, not_eval=False)
        problem = self.make_problem(a, b, digits, "propose")
        problem = problem.model_copy(update={"meta": {**problem.meta, "label_source": "execution"}})
        return Parsed(problem, "execution", {"parsed": True, "difficulty": True, "not_eval": True}, None,
                      float(2 * digits))

    # ------------------------------------------------------------------ second attempts (correct)
    # The tiny model's vocabulary is digits, "+" and "=": the second attempt follows the first after "=" (intrinsic:
    # "look again") or "==" (extrinsic: "that was wrong"). "=" resets the coupled position ids, so the second
    # answer's digit i shares its position with digit i of the operands and of the first answer.

    def feedback(self, mode: str, verdict: Any = None, instruction: str | None = None) -> str:
        if mode == "intrinsic":
            return instruction or "="
        return "=="

    def correction_prompt(self, problem: Problem, first: str, feedback: str, id: str) -> Problem:
        return problem.model_copy(update={"id": id, "prompt": f"{problem.prompt}{first.strip()}{feedback}",
                                          "meta": {**problem.meta, "attempt_of": problem.id, "first": first}})

    def swap_operands(self, problem: Problem) -> Problem:
        """The commuted view b + a of a problem (same answer, same partition): a label-free second opinion."""
        a, b, digits = int(problem.meta["a"]), int(problem.meta["b"]), int(problem.difficulty or 1)
        split = problem.id.split("/")[1] if problem.id.count("/") >= 2 else "train"
        view = self.make_problem(b, a, digits, split, suffix="/swap")
        return view.model_copy(update={"solution": view.answer if problem.solution else None})

    VIEW_KINDS: ClassVar[tuple[str, ...]] = ("prefix", "swap")

    def prefix_view(self, problem: Problem) -> Problem | None:
        """The truncated problem: the low L-1 digits of both operands (None for L = 1).

        The low L-1 digits of a + b depend only on the low L-1 digits of a and b, so a model's answer to this
        easier problem checks the first L-1 characters of its answer to the full one (reversed format). The
        truncated operands keep their zeros (``"1023"`` -> ``"320"`` reversed): the prompt is the original's
        reversed operands cut to L-1 characters, never re-parsed, so it is the same text the model would see
        inside the full problem.
        """
        digits = int(problem.difficulty or 1)
        if digits < 2:
            return None
        if not self.reverse or self.answer_width != "fixed":
            raise ValueError("the 'prefix' view needs reverse: true and answer_width: fixed (the low digits come first)")
        a, b, d = int(problem.meta["a"]), int(problem.meta["b"]), digits - 1
        ra, rb = str(a)[::-1][:d], str(b)[::-1][:d]
        low = a % 10**d + b % 10**d
        answer = self.format_answer(low, d)
        return Problem(
            id=f"{problem.id}/prefix",
            prompt=f"{ra}+{rb}=",
            answer=answer,
            difficulty=d,
            verifier=problem.verifier,
            source=problem.source,
            meta={"a": a % 10**d, "b": b % 10**d, "sum": low, "answer_regex": self.answer_regex(d),
                  "max_new_tokens": d + 1, "min_new_tokens": d + 1, "view_of": problem.id, "view": "prefix"},
        )

    def views(self, problem: Problem, kinds: list[str]) -> list[Problem]:
        """``prefix`` (see :meth:`prefix_view`; its low L-1 answer digits must match) and ``swap`` (b + a, same
        answer; ``meta.group`` is the original's id so ``majority_vote`` with ``views: true`` pools them)."""
        unknown = [k for k in kinds if k not in self.VIEW_KINDS]
        if unknown:
            raise ValueError(f"arithmetic offers the views {list(self.VIEW_KINDS)}, not {unknown} (sample.views)")
        out: list[Problem] = []
        for kind in kinds:
            if kind == "prefix":
                view = self.prefix_view(problem)
                if view is not None:
                    out.append(view)
            else:
                view = self.swap_operands(problem)
                out.append(view.model_copy(update={"meta": {**view.meta, "view_of": problem.id, "view": "swap",
                                                            "group": problem.id}}))
        return out

    def view_consistent(self, problem: Problem, answer: str, view: Problem, view_answer: str) -> bool:
        """prefix: the first L-1 characters of both answers agree; swap: the answers are equal."""
        if view.meta.get("view") == "prefix":
            d = int(problem.difficulty or 1) - 1
            return len(answer) >= d and len(view_answer) >= d and answer[:d] == view_answer[:d]
        return answer.strip() == view_answer.strip()

    # ----------------------------------------------------------------- drawing pairs
    def _partition_list(self, digits: int, want_eval: bool) -> list[tuple[int, int]]:
        lo, hi = operand_range(digits)
        return [
            (a, b)
            for a in range(lo, hi + 1)
            for b in range(lo, hi + 1)
            if self.is_eval_pair(a, b) == want_eval
        ]

    def _space_size(self, digits: int) -> int:
        lo, hi = operand_range(digits)
        return (hi - lo + 1) ** 2

    def _draw(self, digits: int, n: int, want_eval: bool, rng: random.Random) -> list[tuple[int, int]]:
        """Up to ``n`` distinct ordered pairs from one partition, in a seed-determined order."""
        if n <= 0:
            return []
        if self._space_size(digits) <= _ENUMERATE_MAX:
            pairs = self._partition_list(digits, want_eval)
            rng.shuffle(pairs)
            return pairs[:n]
        lo, hi = operand_range(digits)
        seen: set[tuple[int, int]] = set()
        out: list[tuple[int, int]] = []
        # Rejection sampling: the partition holds a fixed share of a huge space, so this ends quickly.
        while len(out) < n:
            pair = (rng.randint(lo, hi), rng.randint(lo, hi))
            if pair in seen or self.is_eval_pair(*pair) != want_eval:
                continue
            seen.add(pair)
            out.append(pair)
        return out

    @staticmethod
    def _rng(*parts: object) -> random.Random:
        return random.Random("/".join(str(p) for p in ("arithmetic", *parts)))

    # ----------------------------------------------------------------- ProblemSet API
    def splits(self) -> list[str]:
        return ["train", "test"]

    def difficulty_legend(self) -> tuple[str, str]:
        return "N-digit problems (difficulty N)", "-digit"

    def load(self, split: str) -> list[Problem]:
        """A default-sized split: ``test`` = ``eval_set(default_per_difficulty, default_difficulties, 0)``,
        ``train`` = ``labelled(default_per_difficulty, default_difficulties, 0)``."""
        if split == "test":
            return self.eval_set(self.default_per_difficulty, self.default_difficulties, 0)
        if split == "train":
            return self.labelled(self.default_per_difficulty, self.default_difficulties, 0)
        raise ValueError(f"arithmetic has splits 'train' and 'test', not {split!r}")

    def training_pool(
        self, n: int, difficulties: list[int] | None, seed: int, round: int, split: str = "train"
    ) -> list[Problem]:
        """``n`` fresh training-partition problems, split evenly over ``difficulties`` (earlier ones take the
        remainder), distinct within the call. ``answer`` is set for reporting; label-free filters ignore
        it. ``split`` is ignored: a generator has one training partition."""
        diffs = list(difficulties or self.default_difficulties)
        out: list[Problem] = []
        for i, d in enumerate(diffs):
            k = n // len(diffs) + (1 if i < n % len(diffs) else 0)
            pairs = self._draw(d, k, False, self._rng("pool", seed, round, d))
            if len(pairs) < k:
                logger.info("difficulty %d has only %d training problems; asked for %d", d, len(pairs), k)
            out.extend(self.make_problem(a, b, d, "train") for a, b in pairs)
        return out

    def difficulties(self, split: str = "train") -> list[int]:
        """Every length up to ``MAX_CURRICULUM_DIGITS``: the set makes problems of any length."""
        return list(range(1, MAX_CURRICULUM_DIGITS + 1))

    def labelled(self, n_per_difficulty: int, difficulties: list[int] | None, seed: int) -> list[Problem]:
        """Bootstrap data: ``n_per_difficulty`` training problems per difficulty with ``solution`` = the gold
        completion. Where a difficulty has fewer distinct training problems, they repeat (ids
        ``.../rep<k>``)."""
        out: list[Problem] = []
        for d in difficulties or self.default_difficulties:
            pairs = self._draw(d, n_per_difficulty, False, self._rng("labelled", seed, d))
            for i in range(n_per_difficulty):
                if not pairs:
                    break
                a, b = pairs[i % len(pairs)]
                rep = i // len(pairs)
                p = self.make_problem(a, b, d, "train", suffix=f"/rep{rep}" if rep else "")
                out.append(p.model_copy(update={"solution": p.answer}))
        return out

    def eval_set(
        self, per_difficulty: int | None, difficulties: list[int] | None, seed: int, split: str = "test"
    ) -> list[Problem]:
        """Held-out problems: up to ``per_difficulty`` distinct eval-partition problems per difficulty (all of
        them for small difficulties; ``None`` means all when enumerable, else ``default_per_difficulty``).
        ``split`` is ignored: a generator keeps its own held-out partition, disjoint from what rounds sample."""
        out: list[Problem] = []
        for d in difficulties or self.default_difficulties:
            n = per_difficulty
            if n is None:
                n = (
                    self._space_size(d)
                    if self._space_size(d) <= _ENUMERATE_MAX
                    else self.default_per_difficulty
                )
            pairs = self._draw(d, n, True, self._rng("eval", seed, d))
            out.extend(self.make_problem(a, b, d, "test") for a, b in pairs)
        return out

    def iter_difficulties(self, problems: list[Problem]) -> Iterator[tuple[int, list[Problem]]]:
        """Group problems by difficulty, in increasing order (a small helper for reports)."""
        by: dict[int, list[Problem]] = {}
        for p in problems:
            by.setdefault(int(p.difficulty or 0), []).append(p)
        yield from sorted(by.items())
