"""Problem sets by name (lazy imports)."""

from selfimprove.problems.base import ProblemSet
from selfimprove.registry import Registry

PROBLEM_SETS: Registry[type[ProblemSet]] = Registry("problem set")
PROBLEM_SETS.register("arithmetic", "selfimprove.problems.arithmetic:ArithmeticProblems")
PROBLEM_SETS.register("jsonl", "selfimprove.problems.jsonl:JsonlProblems")
PROBLEM_SETS.register("gsm8k", "selfimprove.problems.gsm8k:GSM8KProblems")
PROBLEM_SETS.register("math500", "selfimprove.problems.math500:Math500Problems")
PROBLEM_SETS.register("mbpp", "selfimprove.problems.mbpp:MBPPProblems")
PROBLEM_SETS.register("humaneval", "selfimprove.problems.humaneval:HumanEvalProblems")
PROBLEM_SETS.register("reasoning_gym", "selfimprove.problems.reasoning_gym:ReasoningGymProblems")

__all__ = ["PROBLEM_SETS", "ProblemSet"]
