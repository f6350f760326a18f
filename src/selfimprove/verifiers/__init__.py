"""Verifiers by name. Entries are import strings so heavy dependencies load only when used."""

from selfimprove.registry import Registry
from selfimprove.verifiers.base import AnswerVerifier, Verifier

VERIFIERS: Registry[type[Verifier]] = Registry("verifier")
VERIFIERS.register("exact_match", "selfimprove.verifiers.exact:ExactMatchVerifier")
VERIFIERS.register("majority_vote", "selfimprove.verifiers.vote:MajorityVoteVerifier")
VERIFIERS.register("gsm8k", "selfimprove.verifiers.gsm8k:GSM8KVerifier")
VERIFIERS.register("math_equiv", "selfimprove.verifiers.math_equiv:MathEquivVerifier")
VERIFIERS.register("sandboxed_tests", "selfimprove.verifiers.code:SandboxedTestsVerifier")
VERIFIERS.register("judge", "selfimprove.verifiers.judge:JudgeVerifier")
VERIFIERS.register("reasoning_gym", "selfimprove.verifiers.reasoning_gym:ReasoningGymVerifier")


def make_verifier(name: str, **options) -> Verifier:
    return VERIFIERS.get(name)(**options)


__all__ = ["VERIFIERS", "AnswerVerifier", "Verifier", "make_verifier"]
