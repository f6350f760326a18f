"""Chat-format models: a tiny model built from a config whose tokenizer carries a real ChatML template.

Checked token by token: the prompt the samplers render (generation prompt open), the end-of-turn stop (generation
ends on ``<|im_end|>``, which is not part of the text), the SFT loss mask (the assistant's content and its end of
turn, never the prompt). Then whole rounds with ``model.chat: always`` through every stage, with the SFT, DPO and
GRPO trainers in TRL's conversational format.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from helpers import MINI_OVERRIDES

from selfimprove.chat import messages_of, render_prompt, stop_token_ids, use_chat
from selfimprove.config import TrainConfig
from selfimprove.params import load_config
from selfimprove.types import Problem, TrainRow

ROOT = Path(__file__).resolve().parents[2]

#: ChatML as Qwen2.5-Instruct writes it (without its default system prompt).
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHARS = "0123456789+= \nabcdefghijklmnopqrstuvwxyz?:"
SYSTEM = "add"


def chatml_tokenizer() -> Any:
    from selfimprove.models.tiny import build_char_tokenizer

    tok = build_char_tokenizer(CHARS)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def ids(tok: Any, text: str) -> list[int]:
    """Token ids of plain text, one per character (the char tokenizer), no specials added."""
    vocab = tok.get_vocab()
    return [vocab[c] for c in text]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ChatML model taught (SFT, conversational) to answer one-digit sums and end its turn."""
    import random

    from selfimprove.models.tiny import build_tiny_model
    from selfimprove.trainers.sft import train_sft

    tok = chatml_tokenizer()
    model = build_tiny_model(tok, layers=1, hidden=64, heads=2, intermediate=128, position_scheme="standard")
    rng = random.Random(0)
    rows = []
    for i in range(400):
        a, b = rng.randrange(5), rng.randrange(5)
        rows.append(TrainRow(id=str(i), prompt=f"{a}+{b}=", completion=str(a + b), problem_id=str(i), origin="real",
                             round=0, messages=[{"role": "system", "content": SYSTEM},
                                                {"role": "user", "content": f"{a}+{b}="}]))
    out = tmp_path_factory.mktemp("chatml") / "model"
    cfg = TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, max_length=64, device="cpu")
    train_sft("unused", rows, out, cfg, model=model, tokenizer=tok, progress=False, chat=True)
    return out


def test_use_chat_modes() -> None:
    from selfimprove.models.tiny import build_char_tokenizer

    plain, chat = build_char_tokenizer("01"), chatml_tokenizer()
    assert use_chat("auto", chat) and not use_chat("auto", plain)
    assert not use_chat("never", chat) and use_chat("always", chat)
    with pytest.raises(ValueError, match="model.chat is 'always' but the tokenizer of .* has no chat template"):
        use_chat("always", plain)


def test_rendered_prompt_and_end_of_turn_token_by_token(chat_model: Path) -> None:
    from selfimprove.samplers import SamplingParams
    from selfimprove.samplers.hf import TransformersSampler

    sampler = TransformersSampler(chat_model, device="cpu", chat="always")
    tok = sampler.tok
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert stop_token_ids(tok) == [tok.eos_token_id, end]
    p = Problem(id="p", prompt="2+1=", messages=[{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": "2+1="}])
    text = sampler.prompt_text(p)
    assert text == "<|im_start|>system\nadd<|im_end|>\n<|im_start|>user\n2+1=<|im_end|>\n<|im_start|>assistant\n"
    # token by token: the template's specials are single tokens, no BOS is added in front of the template
    enc = tok(text, add_special_tokens=False)["input_ids"]
    assert enc == ([start] + ids(tok, "system\nadd") + [end] + ids(tok, "\n") + [start] + ids(tok, "user\n2+1=")
                   + [end] + ids(tok, "\n") + [start] + ids(tok, "assistant\n"))
    # raw text mode: the bare prompt (with the tokenizer's BOS)
    assert TransformersSampler.from_model(sampler.model, tok).prompt_text(p) == text  # auto: the template is there
    assert TransformersSampler(chat_model, device="cpu", chat="never").prompt_text(p) == "2+1="
    # generation stops on <|im_end|>; it is not in the text, its log-prob is kept (as EOS's is)
    [c] = sampler.sample([p], SamplingParams(k=0, greedy=True, max_new_tokens=8, logprobs=True), round=1, progress=False)
    assert c.finish_reason == "stop" and len(c.text) == 1 and c.text.isdigit(), c  # one digit, then end of turn
    assert c.n_tokens == 1 and len(c.token_logprobs or []) == 2
    raw = sampler.model.generate(**tok(text, return_tensors="pt", add_special_tokens=False), max_new_tokens=8,
                                 do_sample=False, eos_token_id=stop_token_ids(tok), pad_token_id=tok.pad_token_id)
    assert raw[0, len(enc):].tolist()[:2] == [ids(tok, c.text)[0], end]


def test_sft_loss_mask_is_the_completion_and_end_of_turn(chat_model: Path, tmp_path: Path) -> None:
    """TRL's conversational prompt/completion rows: the loss covers '3', '<|im_end|>' and the template's newline."""
    from transformers import TrainerCallback

    from selfimprove.trainers.sft import load_for_training, train_sft

    seen: dict[str, Any] = {}

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kw):  # noqa: ANN001
            seen["row"] = train_dataloader.dataset[0]
            seen["batch"] = train_dataloader.collate_fn([train_dataloader.dataset[0]])

    cfg = TrainConfig(steps=1, batch_size=1, lr=1e-4, warmup_steps=0, max_length=64, device="cpu")
    model, tok = load_for_training(chat_model, cfg)
    row = TrainRow(id="x", prompt="2+1=", completion="3", problem_id="x", origin="self", round=1,
                   messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+1="}])
    train_sft("unused", [row], tmp_path / "out", cfg, model=model, tokenizer=tok, progress=False, chat=True,
              callbacks=[Grab()])
    start, end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    prompt = tok(render_prompt(tok, messages_of(row.prompt, row.messages)), add_special_tokens=False)["input_ids"]
    completion = ids(tok, "3") + [end] + ids(tok, "\n")
    assert seen["row"]["input_ids"] == prompt + completion
    # TRL writes the mask as labels: -100 (no loss) on every prompt token, the token itself on the completion
    assert seen["row"]["labels"] == [-100] * len(prompt) + completion
    assert seen["batch"]["labels"][0].tolist() == [-100] * len(prompt) + completion
    assert prompt[0] == start


def test_grpo_conversational_rewards_see_the_assistant_text(chat_model: Path, tmp_path: Path) -> None:
    from selfimprove.trainers.grpo import GRPOOptions, Rollouts, train_grpo
    from selfimprove.trainers.sft import load_for_training
    from selfimprove.types import PromptRow

    seen: list[Any] = []

    def reward(prompts: list[Any], completions: list[Any], problem_id: list[str], **kw: Any) -> list[float]:
        seen.extend(completions)
        return [1.0 if (c[-1]["content"] if isinstance(c, list) else c) == "3" else 0.0 for c in completions]

    reward.__name__ = "three"
    cfg = TrainConfig(steps=2, batch_size=4, lr=1e-4, warmup_steps=0, max_length=64, device="cpu")
    model, tok = load_for_training(chat_model, cfg)
    rows = [PromptRow(id="r", prompt="2+1=", problem_id="p", round=1, pass_rate=0.5,
                      messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+1="}])]
    report = train_grpo("unused", rows, tmp_path / "out", cfg, grpo=GRPOOptions(num_generations=4), rewards=[reward],
                        max_completion_length=6, chat=True, model=model, tokenizer=tok, progress=False)
    assert report["steps"] == 2 and seen
    # conversational completions: one assistant message whose content stops before the end of turn
    assert all(isinstance(c, list) and c[-1]["role"] == "assistant" and "<|im_end|>" not in c[-1]["content"]
               for c in seen)
    assert Rollouts  # the recorder is exercised by the round test below


@pytest.mark.parametrize("trainer", ["sft", "dpo", "grpo"])
def test_chat_round_through_every_stage(chat_model: Path, tmp_path: Path, trainer: str) -> None:
    from selfimprove.io import read_verified_jsonl
    from selfimprove.paths import RoundPaths
    from selfimprove.stages import run_bootstrap, run_evaluate, run_finetune, run_sample, run_validate, run_verify
    from selfimprove.tracker import NullTracker
    from selfimprove.types import Completion

    proj = tmp_path / "p"
    proj.mkdir()
    shutil.copy(ROOT / "params.yaml", proj / "params.yaml")
    extra = {"sft": [], "dpo": ["finetune.trainer=dpo"],
             "grpo": ["finetune.trainer=grpo", "finetune.grpo.num_generations=4", "finetune.train.batch_size=8",
                      "finetune.grpo.prompt_band=[0.0, 1.0]"]}[trainer]
    cfg = load_config(proj / "params.yaml", MINI_OVERRIDES + [
        "tracking.enabled=false", "model.source=path", f"model.path={chat_model}", "model.chat=always",
        "rounds={r1: {prev: r0, difficulties: [1]}}", "evaluate.difficulties=[1]", "sample.problems_per_round=24",
        "validate.mix_real=0.0", "validate.filters=[{function: dedup}]"] + extra)
    t = NullTracker()
    run_bootstrap(cfg, RoundPaths.for_round(cfg, "r0", proj), t)
    paths = RoundPaths.for_round(cfg, "r1", proj)
    reports = {}
    for name, fn in [("sample", run_sample), ("verify", run_verify), ("validate", run_validate),
                     ("finetune", run_finetune), ("evaluate", run_evaluate)]:
        reports[name] = fn(cfg, paths, t)
    samples = read_verified_jsonl(paths.sample / "samples.jsonl", Completion)
    assert samples and not any("<|im_end|>" in c.text or "<|im_start|>" in c.text for c in samples)
    assert reports["finetune"].details["chat"] is True
    tok_cfg = json.loads((paths.model / "tokenizer_config.json").read_text())
    assert tok_cfg.get("chat_template") or (paths.model / "chat_template.jinja").exists()  # the template travels
    assert "accuracy" in json.loads(paths.metrics.read_text())
    if trainer == "grpo":
        assert (paths.finetune / "rollouts.jsonl").stat().st_size > 0


def test_a_saved_folder_says_whether_it_has_a_template(chat_model: Path, tmp_path: Path) -> None:
    """The OpenAI sampler decides ``auto`` from the model folder's files (no tokenizer loaded)."""
    from selfimprove.chat import folder_has_template, model_has_template
    from selfimprove.models.tiny import build_char_tokenizer
    from selfimprove.samplers.openai import _local_template

    build_char_tokenizer("01").save_pretrained(tmp_path / "plain")
    assert folder_has_template(chat_model) and _local_template(chat_model)
    assert not folder_has_template(tmp_path / "plain") and not _local_template(tmp_path / "plain")
    assert not _local_template("Qwen/Qwen2.5-0.5B-Instruct")  # a hub id: no local files, completions endpoint
    # the finetune stage loads what is not a folder (a hub id), as the samplers do; nothing to load: raw text
    assert model_has_template(chat_model, load=True) and not model_has_template(tmp_path / "plain", load=True)
    assert not model_has_template("no-such-org/no-such-model", load=True)


def test_grpo_two_attempt_rollout_in_the_chat_template(chat_model: Path, tmp_path: Path) -> None:
    """Self-correction GRPO on a ChatML model: the feedback turn, rendered by the template, is out of the loss."""
    from selfimprove.problems.base import ProblemSet
    from selfimprove.trainers.grpo import GRPOOptions, RewardSpec, Rollouts, TwoAttempts, train_grpo
    from selfimprove.trainers.sft import load_for_training
    from selfimprove.types import PromptRow
    from selfimprove.verifiers import VERIFIERS

    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "2+1="}]
    problems = {"p": Problem(id="p", prompt="2+1=", messages=msgs, answer="3")}
    rec = Rollouts(["improvement"], [1.0], None, 1)
    two = TwoAttempts(problems, ProblemSet(), "intrinsic", "check again", 1.0, [RewardSpec(verifier="exact_match")],
                      lambda name: VERIFIERS.get(name)(), rec, 1)
    seen: list[dict] = []
    rollout = two.rollout
    two.rollout = lambda prompts, trainer: seen.append(rollout(prompts, trainer)) or seen[-1]  # type: ignore[method-assign]
    cfg = TrainConfig(steps=1, batch_size=4, lr=1e-4, warmup_steps=0, max_length=64, device="cpu")
    model, tok = load_for_training(chat_model, cfg)
    rows = [PromptRow(id="r", prompt="2+1=", problem_id="p", round=1, pass_rate=0.5, messages=msgs)]
    train_grpo("unused", rows, tmp_path / "out", cfg, grpo=GRPOOptions(num_generations=4), rewards=[],
               max_completion_length=4, chat=True, model=model, tokenizer=tok, progress=False, two_attempts=two)
    turn = "<|im_end|>\n<|im_start|>user\ncheck again<|im_end|>\n<|im_start|>assistant\n"
    for ids_, mask in zip(seen[0]["completion_ids"], seen[0]["env_mask"]):
        masked = [t for t, m in zip(ids_, mask) if m == 0]
        assert tok.decode(masked) == turn, "exactly the feedback turn is the environment's"
        first_zero, last_zero = mask.index(0), len(mask) - 1 - mask[::-1].index(0)
        assert all(m == 0 for m in mask[first_zero:last_zero + 1])
    assert len(rec.records()) == 4
