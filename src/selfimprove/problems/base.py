"""Problem-set protocol: a named source of ``Problem`` records with splits.

``load(split)`` returns the problems of a split ('train', 'test', ...). ``generate(n, difficulties, seed,
round)`` is for procedural sets that can make fresh unlabelled problems each round. Every problem set
guarantees that nothing in its evaluation split can appear in what it hands out for training.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, ClassVar

from selfimprove.types import Problem

if TYPE_CHECKING:
    import random

    from selfimprove.proposals import Parsed

#: the default intrinsic instruction before a second attempt: it reveals nothing about the first one's verdict
INTRINSIC_INSTRUCTION = ("There may be an error in your previous answer. Check it step by step and give your final "
                         "answer again, in the same format.")
#: the default extrinsic feedback: the verifier said the first attempt is wrong (verl's GSM8K interaction says as much)
EXTRINSIC_FEEDBACK = "Your answer is incorrect. Try again, and give your final answer in the same format."
#: the proposer's system message in the default (chat) proposal prompt
PROPOSER_SYSTEM = "You write new practice problems. Reply with the problem only."


class ProblemSet:
    name: ClassVar[str] = "base"
    #: Verifier to use for this set's problems unless the config says otherwise.
    default_verifier: ClassVar[str] = "exact_match"
    #: Gold verifiers that read this set's answers correctly (``selfimprove check`` refuses others for evaluate,
    #: and as the round verifier or the majority vote's answer reader); empty = only ``gold_verifier()``.
    verifiers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any):
        self.options = options

    def gold_verifier(self) -> str:
        """The verifier this set's evaluation grades with (its declared one: ``default_verifier``, or what its
        options name, e.g. ``problems.jsonl.verifier``); rows that name their own verifier are routed to it."""
        return self.default_verifier

    def difficulty_legend(self) -> tuple[str, str]:
        """What difficulty N means, for the report's legend ("Nd: accuracy on ...") and its summary lines."""
        return "difficulty N", "difficulty"

    def compatible_verifiers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.gold_verifier(), *self.verifiers)))

    # ------------------------------------------------------------------------- model-written problems (propose)

    def proposal_prompt(self, examples: list[Problem], index: int, rng: random.Random) -> Problem:
        """What the proposer continues to write one new problem like ``examples`` (default: a chat request listing
        them). ``answer`` holds a valid proposal where the set can make one (the ``scripted`` fake writes it);
        ``meta.max_new_tokens`` the room a proposal needs."""
        from selfimprove.proposals import problem_text

        listed = "\n".join(f"{i + 1}. {problem_text(e)}" for i, e in enumerate(examples))
        user = (f"Here are example problems:\n\n{listed}\n\nWrite one new problem of the same kind, different "
                "from these. Reply with the problem only.")
        return Problem(id=f"propose/{index}", prompt=user,
                       messages=[{"role": "system", "content": PROPOSER_SYSTEM}, {"role": "user", "content": user}],
                       answer=self.reference_proposal(examples, rng), source=self.name,
                       meta={"parents": [e.id for e in examples], "max_new_tokens": 96})

    def reference_proposal(self, examples: list[Problem], rng: random.Random) -> str | None:
        """A valid proposal text like ``examples`` (None: the set cannot make one)."""
        return None

    def parse_proposal(self, text: str, examples: list[Problem], round: int) -> Parsed:
        """The problem a proposal's text states (default: the text itself, as free text whose label the round's
        majority vote decides, with the examples' system prompt)."""
        from selfimprove.proposals import Parsed

        body = text.strip()
        if not body:
            return Parsed.reject("empty", parsed=False)
        system = [m for m in (examples[0].messages or []) if m.get("role") == "system"] if examples else []
        digest = hashlib.sha256(body.encode()).hexdigest()[:12]
        problem = Problem(id=f"{self.name}/propose/r{round}/{digest}", prompt=body,
                          messages=[*system, {"role": "user", "content": body}] if system else None,
                          difficulty=examples[0].difficulty if examples else None, source=self.name,
                          meta={"label_source": "vote"})
        return Parsed(problem, "vote", {"parsed": True}, None, float(len(body.split())))

    def novelty_text(self, problem: Problem) -> str:
        """What near-duplicate detection compares for a problem of this set (default: the text a reader sees).
        Sets that wrap what the model wrote in a fixed template compare the part that varies."""
        from selfimprove.proposals import problem_text

        return problem_text(problem)

    def check_proposals(self, parsed: list[Parsed], sandbox: dict[str, Any]) -> None:
        """Checks that run the proposals (in the sandbox, with ``verify.sandboxed_tests``' limits), batched, in
        place; sets whose proposals need none do nothing."""

    # ------------------------------------------------------------------------- second attempts (correct)

    def feedback(self, mode: str, verdict: Any = None, instruction: str | None = None) -> str:
        """What the model is told before its second attempt: ``intrinsic``, a fixed instruction that reveals no
        verdict (``correct.instruction`` when set); ``extrinsic``, the verifier's verdict on the first attempt
        (code sets add the failing test's message)."""
        if mode == "intrinsic":
            return instruction or INTRINSIC_INSTRUCTION
        return EXTRINSIC_FEEDBACK


    def correction_prompt(self, problem: Problem, first: str, feedback: str, id: str) -> Problem:
        """The problem as a second attempt: the conversation so far (the problem, the first attempt as the model's
        turn, the feedback as the user's) for chat models, and the same as raw text. Gold, tests, verifier and the
        decode limits are the problem's, so the second attempt is graded and sampled like the first."""
        from selfimprove.chat import messages_of

        messages = [*messages_of(problem.prompt, problem.messages), {"role": "assistant", "content": first},
                    {"role": "user", "content": feedback}]
        return problem.model_copy(update={"id": id, "prompt": f"{problem.prompt}{first}\n\n{feedback}\n\n",
                                          "messages": messages,
                                          "meta": {**problem.meta, "attempt_of": problem.id, "first": first}})

    def load(self, split: str) -> list[Problem]:
        """All problems of ``split``; raise ``ValueError`` naming the split/file if unavailable."""
        raise NotImplementedError

    def splits(self) -> list[str]:
        return ["train", "test"]

    def views(self, problem: Problem, kinds: list[str]) -> list[Problem]:
        """Derived problems whose answers must agree with ``problem``'s (label-free consistency checks).

        Each view carries ``meta.view_of`` (the original's id) and ``meta.view`` (its kind). Sets that offer
        none return ``[]``; an unknown kind is an error naming the kinds the set offers.
        """
        if kinds:
            raise ValueError(f"problem set {self.name!r} offers no views (asked for {kinds}); remove sample.views")
        return []

    def view_consistent(self, problem: Problem, answer: str, view: Problem, view_answer: str) -> bool:
        """Whether ``answer`` to ``problem`` agrees with ``view_answer`` to its ``view`` (default: equal)."""
        return answer.strip() == view_answer.strip()

    def difficulties(self, split: str = "train") -> list[int]:
        """The numeric difficulties ``split`` offers, easiest first ([] = no difficulty knob): what the
        curriculum (``loop.policy: curriculum``) moves along."""
        return sorted({p.difficulty for p in self.load(split) if p.difficulty is not None})

    def training_pool(
        self, n: int, difficulties: list[int] | None, seed: int, round: int, split: str = "train"
    ) -> list[Problem]:
        """Problems to sample from in a round (default: ``split``, ``problems.train_split``, subsampled
        deterministically)."""
        import random

        pool = self.load(split)
        if difficulties:
            pool = [p for p in pool if p.difficulty in set(difficulties)]
        rng = random.Random(f"{seed}/{round}/{self.name}")
        if n and n < len(pool):
            pool = rng.sample(pool, n)
        return pool

    def eval_set(
        self, per_difficulty: int | None, difficulties: list[int] | None, seed: int, split: str = "test"
    ) -> list[Problem]:
        """Held-out problems for evaluation (default: ``split``, ``problems.eval_split``, optionally capped per
        difficulty)."""
        import random

        pool = self.load(split)
        if difficulties:
            pool = [p for p in pool if p.difficulty in set(difficulties)]
        if not per_difficulty:
            return pool
        by: dict[Any, list[Problem]] = {}
        for p in pool:
            by.setdefault(p.difficulty, []).append(p)
        rng = random.Random(f"{seed}/eval/{self.name}")
        out: list[Problem] = []
        for d in sorted(by, key=lambda x: (x is None, x)):
            items = by[d]
            out.extend(items if len(items) <= per_difficulty else rng.sample(items, per_difficulty))
        return out


class CodeFeedback:
    """For code problem sets: the extrinsic feedback carries the failing test's message (the sandbox's verdict)."""

    def feedback(self, mode: str, verdict: Any = None, instruction: str | None = None) -> str:
        if mode == "intrinsic":
            return instruction or INTRINSIC_INSTRUCTION
        reason = (getattr(verdict, "reason", "") or "").strip()
        if not reason:
            return EXTRINSIC_FEEDBACK
        return f"Your code is incorrect: {reason[:500]}\nFix it and give the whole function again."
