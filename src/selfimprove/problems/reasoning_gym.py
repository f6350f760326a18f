"""Procedurally generated, exactly checkable tasks from ``reasoning-gym`` (PyPI, Apache-2.0): a difficulty knob per
task, a scorer per task, any number of fresh problems.

What: ``ReasoningGymProblems`` (registry name ``reasoning_gym``) turns one reasoning-gym task (``chain_sum``,
``basic_arithmetic``, ``products``, ``leg_counting``, ``gcd``, ... any name in ``reasoning_gym.factory.DATASETS``)
into ``Problem`` records. Its answers are graded by the ``reasoning_gym`` verifier, which calls the task's own
``score_answer`` on the answer read from the completion.

Difficulty: the task's curriculum (``reasoning_gym.factory.CURRICULA``) has attributes with levels (chain_sum:
``num_terms`` 2..12, ``num_digits`` 1..10); difficulty ``d`` puts each attribute of ``attributes`` (default: all)
at level ``d-1`` (capped at its last level) and the others at level 0, then ``config`` overrides generator
parameters by name (``{max_terms: 2}`` holds the number of terms at two while the digits climb). The
curriculum policy (``loop.policy: curriculum``) climbs this knob like arithmetic's digits.

Splits: every problem is generated from a seed derived from (split, difficulty, seed, round) and kept for
evaluation or for training by a hash of its question (``eval_fraction`` of them are evaluation-only), so no
evaluation question is ever handed out for training, whatever the seeds.

Prompts: each problem is the task's question plus ``prompt_suffix``, as chat messages with ``system_prompt``
(an instruct model's own template then renders them; SmolLM2's would otherwise inject its "You are a helpful
AI assistant named SmolLM" prompt), and as raw text for models without a template.
"""

from __future__ import annotations

import hashlib
import logging
import re
from typing import Any, ClassVar

from pydantic import Field

from selfimprove.options import Strict
from selfimprove.problems.base import ProblemSet
from selfimprove.types import Problem

log = logging.getLogger(__name__)


class ReasoningGymConfig(Strict):
    """Options of the ``reasoning_gym`` problem set (``problems.reasoning_gym.*`` in params.yaml)."""

    task: str = Field("chain_sum", description="A reasoning-gym dataset name (reasoning_gym.factory.DATASETS).")
    attributes: list[str] | None = Field(
        None, description="Curriculum attributes that climb with difficulty (None = all of the task's).")
    config: dict[str, Any] = Field(
        default_factory=dict, description="Generator parameters fixed for every difficulty (override the curriculum).")
    max_difficulty: int | None = Field(
        None, ge=1, description="Highest difficulty offered (None = the deepest level of the climbing attributes).")
    system_prompt: str | None = Field(
        "Answer with only the final answer.",
        description="System message of every problem (chat models); None = the model template's default.")
    prompt_suffix: str = Field("", description="Appended to each question (e.g. ' Answer with only the number.').")
    eval_fraction: float = Field(0.1, gt=0, lt=1, description="Share of generated questions kept for evaluation only.")
    per_difficulty: int = Field(500, ge=1, description="Problems per difficulty of the default splits (load()).")


def _keep_for_eval(question: str, fraction: float) -> bool:
    """The partition: a question is evaluation-only when its hash falls in the first ``fraction`` of the range.

    >>> _keep_for_eval("What is 1 + 1?", 0.5) in (True, False)
    True
    """
    h = int.from_bytes(hashlib.sha256(question.encode()).digest()[:8], "big")
    return h < fraction * 2**64


class ReasoningGymProblems(ProblemSet):
    name: ClassVar[str] = "reasoning_gym"
    default_verifier: ClassVar[str] = "reasoning_gym"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.config = ReasoningGymConfig(**options)
        from reasoning_gym.factory import CURRICULA, DATASETS

        from selfimprove.registry import did_you_mean

        task = self.config.task
        if task not in DATASETS:
            raise ValueError(f"problems.reasoning_gym.task: unknown task {task!r}{did_you_mean(task, sorted(DATASETS))}")
        self._dataset_cls, self._config_cls = DATASETS[task]
        self._curriculum_cls = CURRICULA.get(task)
        self._attrs: dict[str, int] = {}
        if self._curriculum_cls is not None:
            cur = self._curriculum_cls()
            wanted = self.config.attributes if self.config.attributes is not None else list(cur.attributes)
            unknown = [a for a in wanted if a not in cur.attributes]
            if unknown:
                raise ValueError(f"problems.reasoning_gym.attributes: {task} has no curriculum attribute "
                                 f"{unknown[0]!r}; it has {sorted(cur.attributes)}")
            self._attrs = {a: len(cur.attributes[a].levels) for a in wanted}
        elif self.config.attributes:
            raise ValueError(f"problems.reasoning_gym.attributes: task {task!r} has no curriculum; fix its "
                             "parameters with problems.reasoning_gym.config and use one difficulty")
        fields = set(self._config_cls.__dataclass_fields__)
        bad = [k for k in self.config.config if k not in fields]
        if bad:
            raise ValueError(f"problems.reasoning_gym.config: {task} has no parameter {bad[0]!r}{did_you_mean(bad[0], sorted(fields))}")
        self._cache: dict[tuple[Any, ...], list[Problem]] = {}

    # -------------------------------------------------------------------------------------- generation

    def generator_config(self, difficulty: int, seed: int, size: int) -> Any:
        """The task's config object for ``difficulty``: curriculum levels, then the fixed ``config``."""
        base = {"seed": seed, "size": size}
        if self._curriculum_cls is not None:
            cur = self._curriculum_cls()
            for a in cur.attributes:
                n = self._attrs.get(a)
                cur.set_attr_level(a, min(difficulty - 1, n - 1) if n else 0)
            cfg = cur.generate_configuration(base)
            for k, v in self.config.config.items():
                setattr(cfg, k, v)
            if hasattr(cfg, "validate"):
                cfg.validate()
            return cfg
        return self._config_cls(**(base | self.config.config))

    def difficulties(self, split: str = "train") -> list[int]:
        top = self.config.max_difficulty or (max(self._attrs.values()) if self._attrs else 1)
        return list(range(1, top + 1))

    def _generate(self, difficulty: int, n: int, want_eval: bool, seed_text: str) -> list[Problem]:
        key = (difficulty, n, want_eval, seed_text)
        if key in self._cache:
            return self._cache[key]
        seed = int.from_bytes(hashlib.sha256(f"{self.config.task}/{seed_text}/{difficulty}".encode()).digest()[:4], "big")
        out: list[Problem] = []
        seen: set[str] = set()
        tries = 0
        frac = self.config.eval_fraction
        batch = max(16, int(n / (frac if want_eval else 1 - frac) * 1.3))
        while len(out) < n and tries < 20:
            ds = self._dataset_cls(self.generator_config(difficulty, seed + tries, batch))
            for i in range(len(ds)):
                entry = ds[i]
                q = str(entry["question"])
                if q in seen or _keep_for_eval(q, frac) != want_eval:
                    continue
                seen.add(q)
                out.append(self._problem(entry, difficulty, "test" if want_eval else "train"))
                if len(out) == n:
                    break
            tries += 1
        if len(out) < n:
            log.info("reasoning_gym %s difficulty %d: %d distinct %s problems (asked for %d)", self.config.task,
                     difficulty, len(out), "evaluation" if want_eval else "training", n)
        self._cache[key] = out
        return out

    def _problem(self, entry: dict[str, Any], difficulty: int, split: str) -> Problem:
        question = str(entry["question"]).strip() + self.config.prompt_suffix
        digest = hashlib.sha256(str(entry["question"]).encode()).hexdigest()[:12]
        messages = ([{"role": "system", "content": self.config.system_prompt}] if self.config.system_prompt else []) \
            + [{"role": "user", "content": question}]
        # the kind of answer the task asks for (not the answer): how the label-free vote reads answers, which never
        # sees the gold answer itself
        kind = "number" if re.fullmatch(r"\s*-?\d+(?:\.\d+)?(?:/\d+)?\s*", str(entry["answer"])) else "text"
        meta = {"rg_task": self.config.task, "rg_question": str(entry["question"]), "answer_kind": kind,
                "rg_metadata": _plain(entry.get("metadata") or {})}
        return Problem(id=f"rg/{self.config.task}/d{difficulty}/{split}/{digest}", prompt=question, messages=messages,
                       answer=str(entry["answer"]), difficulty=difficulty, verifier="reasoning_gym",
                       source=f"reasoning_gym/{self.config.task}", meta=meta)

    # --------------------------------------------------------------------------- model-written problems (propose)
    # Tasks whose questions state an integer expression (chain_sum, products, basic_arithmetic): the proposal is read
    # for its expression, which must use the examples' operators; the question keeps an example's wording with the
    # new expression, and the label is the expression's value, computed from its syntax tree. Other tasks fall back
    # to free text (the round's vote labels them).

    def _expression_task(self, examples: list[Problem]) -> bool:
        from selfimprove.proposals import find_expression

        return bool(examples) and all(find_expression(str(e.meta.get("rg_question", e.prompt))) for e in examples)

    def novelty_text(self, problem: Problem) -> str:
        """An expression task's questions share their wording: near-duplicates are judged on the expression (with
        its spacing normalised), so "12 + 7" is new beside "12 + 8" and a copy of a seed's expression is not."""
        from selfimprove.proposals import find_expression

        expr = find_expression(str(problem.meta.get("rg_question", problem.prompt)))
        return " ".join(re.sub(r"\s*([-+*])\s*", r" \1 ", expr).split()) if expr else super().novelty_text(problem)

    def reference_proposal(self, examples: list[Problem], rng: Any) -> str | None:
        from selfimprove.proposals import find_expression, reseed_expression

        if not self._expression_task(examples):
            return None
        q = str(examples[0].meta.get("rg_question", examples[0].prompt))
        expr = find_expression(q) or ""
        return q.replace(expr, reseed_expression(expr, rng), 1)

    def parse_proposal(self, text: str, examples: list[Problem], round: int) -> Any:
        from selfimprove.proposals import Parsed, evaluate_expression, find_expression, operand_digits, operators

        if not self._expression_task(examples):
            return super().parse_proposal(text, examples, round)
        expr = find_expression(text)
        if expr is None:
            return Parsed.reject("no_expression", parsed=False)
        allowed = set().union(*(operators(find_expression(str(e.meta.get("rg_question", e.prompt))) or "")
                                for e in examples))
        if not operators(expr) <= allowed:
            return Parsed.reject("wrong_family", parsed=True, family=False)
        try:
            value = evaluate_expression(expr)
        except ValueError:
            return Parsed.reject("unparsable_expression", parsed=False)
        template = str(examples[0].meta.get("rg_question", examples[0].prompt))
        question = template.replace(find_expression(template) or "", expr, 1)
        if _keep_for_eval(question, self.config.eval_fraction):  # the evaluation partition: never trained on
            return Parsed.reject("eval_problem", parsed=True, family=True, not_eval=False)
        digits = operand_digits(expr)
        difficulty = max(1, min(max(digits), max(self.difficulties())))
        entry = {"question": question, "answer": str(value), "metadata": {"proposed": True}}
        problem = self._problem(entry, difficulty, "propose")
        problem = problem.model_copy(update={"meta": {**problem.meta, "label_source": "execution"}})
        return Parsed(problem, "execution", {"parsed": True, "family": True, "not_eval": True}, None,
                      float(sum(digits)))

    # ------------------------------------------------------------------------------- views (label-free checks)
    # An expression task's question asked another way must have the same answer: a second, partly independent
    # sample of the model's computation. ``majority_vote`` with ``views: true`` pools a problem's answers with its
    # views' (``meta.group``), so an answer the model gives only under one wording loses the vote.

    VIEW_KINDS: ClassVar[tuple[str, ...]] = ("rephrase", "swap")

    def views(self, problem: Problem, kinds: list[str]) -> list[Problem]:
        """``rephrase``: the expression asked as "What is <expr>?"; ``swap``: a two-operand sum or product with its
        operands exchanged (``b + a``; a difference, or equal operands, has no swap view). Same answer, never
        trained on."""
        from selfimprove.proposals import find_expression

        unknown = [k for k in kinds if k not in self.VIEW_KINDS]
        if unknown:
            raise ValueError(f"reasoning_gym offers the views {list(self.VIEW_KINDS)}, not {unknown} (sample.views)")
        question = str(problem.meta.get("rg_question", problem.prompt))
        expr = find_expression(question)
        if expr is None:
            raise ValueError(f"sample.views: the reasoning_gym task {self.config.task!r} states no arithmetic "
                             f"expression (problem {problem.id}: {question[:60]!r}); views need chain_sum, products "
                             "or basic_arithmetic")
        system = [msg for msg in problem.messages if msg.get("role") == "system"]
        out = []
        for kind in kinds:
            if kind == "rephrase":
                asked = f"What is {expr}?"
            else:
                m = re.fullmatch(r"(-?\d+) ([+*]) (-?\d+)", expr)
                if m is None or m.group(1) == m.group(3):
                    continue
                asked = question.replace(expr, f"{m.group(3)} {m.group(2)} {m.group(1)}", 1).strip()
            text = asked + self.config.prompt_suffix
            out.append(problem.model_copy(update={
                "id": f"{problem.id}/{kind}", "prompt": text,
                "messages": [*system, {"role": "user", "content": text}],
                "meta": {**problem.meta, "rg_question": asked, "view_of": problem.id, "view": kind,
                         "group": problem.id}}))
        return out

    # ----------------------------------------------------------------------------------- problem set API

    def splits(self) -> list[str]:
        return ["train", "test"]

    def difficulty_legend(self) -> tuple[str, str]:
        knob = ", ".join(self._attrs) or "its parameters"
        return f"{self.config.task} problems at difficulty N ({knob} at reasoning-gym curriculum level N-1)", "difficulty"

    def load(self, split: str) -> list[Problem]:
        if split not in ("train", "test"):
            raise ValueError(f"reasoning_gym has splits 'train' and 'test', not {split!r}")
        return [p for d in self.difficulties() for p in
                self._generate(d, self.config.per_difficulty, split == "test", f"{split}/0")]

    def training_pool(self, n: int, difficulties: list[int] | None, seed: int, round: int,
                      split: str = "train") -> list[Problem]:
        diffs = list(difficulties or self.difficulties())
        out: list[Problem] = []
        for i, d in enumerate(diffs):
            k = n // len(diffs) + (1 if i < n % len(diffs) else 0)
            out.extend(self._generate(d, k, False, f"pool/{seed}/{round}"))
        return out

    def labelled(self, n_per_difficulty: int, difficulties: list[int] | None, seed: int) -> list[Problem]:
        """Labelled training problems (``solution`` = the gold answer): real data to mix into rounds."""
        out = []
        for d in difficulties or self.difficulties():
            out += [p.model_copy(update={"solution": p.answer})
                    for p in self._generate(d, n_per_difficulty, False, f"labelled/{seed}")]
        return out

    def eval_set(self, per_difficulty: int | None, difficulties: list[int] | None, seed: int,
                 split: str = "test") -> list[Problem]:
        n = per_difficulty or self.config.per_difficulty
        return [p for d in (difficulties or self.difficulties()) for p in self._generate(d, n, True, f"eval/{seed}")]


def _plain(x: Any) -> Any:
    """JSON-safe metadata (tuples -> lists, other objects -> str), as the scorers read it back."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)
