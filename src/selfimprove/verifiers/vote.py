"""Label-free ``majority_vote`` verifier (self-consistency, as in LMSI / ScPO).

For each problem (or group of equivalent views of a problem, ``Problem.meta['group']``) the answers of all
its completions are extracted and clustered with an answer verifier's ``extract``/``equivalent`` (exact
match by default; ``math_equiv`` or ``gsm8k`` for free-text answers). The plurality cluster is the
pseudo-label; every completion gets ``agreement`` = the label's share of all completions of the group
(unparseable completions count against it). A tie for first place yields no label (status ``abstain``).
Gold answers are never read: the verify stage hands this verifier problems with gold fields removed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.types import Completion, Problem, Verdict
from selfimprove.verifiers.base import AnswerVerifier, Verifier


class MajorityVoteConfig(Strict):
    answer: str = Field("exact_match", description="Answer verifier whose extract/equivalent define the vote.")
    views: bool = Field(False, description="Also vote across equivalent views of a problem when the set provides them.")


class MajorityVoteVerifier(Verifier):
    name: ClassVar[str] = "majority_vote"
    needs_gold: ClassVar[bool] = False

    def __init__(self, answer: str = "exact_match", views: bool = False, answer_options: dict[str, Any] | None = None):
        from selfimprove.verifiers import VERIFIERS

        cls = VERIFIERS.get(answer)
        if not issubclass(cls, AnswerVerifier):
            raise ValueError(f"majority_vote.answer must name an answer verifier (extract/equivalent); {answer!r} is not one")
        self.answer_verifier: AnswerVerifier = cls(**(answer_options or {}))
        self.views = views
        super().__init__(answer=answer, views=views)

    def _clusters(self, answers: list[str]) -> list[tuple[str, int]]:
        """(representative, count) per equivalence class, largest first; ties keep first-seen order."""
        counts: dict[str, int] = defaultdict(int)
        order: list[str] = []
        for a in answers:
            if a not in counts:
                order.append(a)
            counts[a] += 1
        reps: list[list[Any]] = []
        for a in order:
            for rep in reps:
                if a == rep[0] or self.answer_verifier.equivalent(a, rep[0]):
                    rep[1] += counts[a]
                    break
            else:
                reps.append([a, counts[a]])
        return sorted(((r[0], r[1]) for r in reps), key=lambda x: -x[1])

    def verify(self, problems: Mapping[str, Problem], completions: Sequence[Completion]) -> list[Verdict]:
        groups: dict[str, list[Completion]] = defaultdict(list)
        for c in completions:
            p = problems[c.problem_id]
            key = str(p.meta.get("group", p.id)) if self.views else p.id
            groups[key].append(c)
        out: dict[str, Verdict] = {}
        for items in groups.values():
            t0 = time.perf_counter()
            answers = [self.answer_verifier.extract(c.text, problems[c.problem_id]) for c in items]
            clusters = self._clusters([a for a in answers if a is not None])
            n = len(items)
            label: str | None = None
            share = 0.0
            tie = len(clusters) > 1 and clusters[0][1] == clusters[1][1]
            if clusters and not tie:
                label, votes = clusters[0]
                share = votes / n
            cost = (time.perf_counter() - t0) / max(n, 1)
            for c, a in zip(items, answers):
                if a is None:
                    status, passed, reason = "no_answer", False, "no answer could be extracted"
                elif label is None:
                    status, passed = "abstain", False
                    reason = "tie between the most common answers" if tie else "no answers"
                else:
                    passed = a == label or self.answer_verifier.equivalent(a, label)
                    status = "pass" if passed else "fail"
                    reason = f"{'agrees' if passed else 'disagrees'} with the majority answer ({share:.0%} of {n} samples)"
                out[c.id] = Verdict(
                    sample_id=c.id,
                    problem_id=c.problem_id,
                    round=c.round,
                    verifier=self.name,
                    passed=passed,
                    score=share if passed else 0.0,
                    status=status,
                    answer=a,
                    label=label,
                    agreement=share,
                    reason=reason,
                    cost_s=cost,
                    details={"votes": n, "clusters": len(clusters)},
                )
        return [out[c.id] for c in completions]
