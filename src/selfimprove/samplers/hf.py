"""``transformers`` sampler: batched ``model.generate`` with a KV cache, on CPU or one GPU.

Prompts are sorted by length and left-padded in batches of about ``batch_size`` sequences (prompts per batch
= batch_size / completions per problem), so padding stays small. Per batch the prompts are run once
(``_prefill``: every prompt token but the last, into a KV cache) and that cache is shared by the greedy pass
and the sampling pass with ``num_return_sequences=k`` (repeated k times per prompt), so the prompt's work is done
once per problem, not once per answer (a real model's chat prompt, system prompt included, is most of the
tokens it processes). Token log-probabilities come from the raw logits (the model's own distribution, before
temperature/top-p), as vLLM's default ``raw_logprobs`` reports them: the per-step logits ``generate`` returns
(``output_logits``) when sequences x steps x vocabulary fit ``logits_budget_bytes`` (256 MiB: always for the tiny
default), else recorded step by step by hooks that hold one step's logits (``_StepLogprobs``; a real model's
49k-152k vocabulary would need GiBs for all steps, and a second forward pass would double the cost).
Sampling is seeded once per call, so the same problems, params and seed give the same completions.
With a chat template in use (``model.chat``; selfimprove/chat.py) each problem's messages are rendered with the
generation prompt, and generation stops on EOS or the template's end-of-turn token (not part of the text).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from selfimprove.checkpoint import resolve as resolve_model
from selfimprove.options import Strict
from selfimprove.samplers.base import Sampler, SamplingParams, completion_id
from selfimprove.types import Completion, Problem

log = logging.getLogger(__name__)


class TransformersSamplerConfig(Strict):
    """``sample.transformers``: where ``model.generate`` runs."""

    device: Literal["auto", "cpu", "cuda"] = "auto"


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("sample.transformers.device is 'cuda' but torch sees no GPU; use 'auto' or 'cpu'")
    return device


def load_model(model_dir: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class

    path = resolve_model(model_dir)
    device = pick_device(device)
    torch_dtype = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if torch_dtype == "auto" and device == "cpu":
        torch_dtype = torch.float32
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model, tok


class _StepLogprobs:
    """The raw log-probability of each generated token, recorded during ``generate``: a hook on the output layer
    keeps the last position's log-softmax of the current step only, and a hook on the input embeddings (whose
    input at the next step is the token just chosen) picks that token's value. Memory: one step's logits."""

    def __init__(self, model: Any):
        self.prev: Any = None
        self.cols: list[Any] = []
        self._hooks = [model.get_output_embeddings().register_forward_hook(self._on_logits),
                       model.get_input_embeddings().register_forward_pre_hook(self._on_tokens)]

    def _on_logits(self, module: Any, args: Any, output: Any) -> None:
        import torch

        self.prev = torch.log_softmax(output[:, -1, :].float(), dim=-1)

    def _on_tokens(self, module: Any, args: Any) -> None:
        if self.prev is not None and args and args[0] is not None:
            ids = args[0][:, -1:]
            if ids.shape[0] == self.prev.shape[0]:
                self.cols.append(self.prev.gather(-1, ids).squeeze(-1))
            self.prev = None

    def remove(self) -> None:
        for h in self._hooks:
            h.remove()

    def result(self, seqs: Any) -> Any:
        """(sequences, steps) log-probs of ``seqs`` (the generated tokens); the last step's comes from the logits
        still held (no forward pass follows it)."""
        import torch

        cols = list(self.cols)
        if self.prev is not None:
            cols.append(self.prev.gather(-1, seqs[:, len(cols):len(cols) + 1]).squeeze(-1))
        return torch.stack(cols[: seqs.shape[1]], dim=1).cpu()


def _greedy_rows(n: int) -> Any:
    """A logits processor for one ``generate`` call that samples ``n`` answers per prompt where the first of each
    prompt's ``n`` rows is its greedy answer: that row keeps only its argmax (after the other processors, before
    temperature and top-p), so its draw is the greedy token, and the greedy answer shares the samples' batch
    instead of a call of its own (one forward pass per step for all ``n`` answers)."""
    import torch
    from transformers import LogitsProcessor

    class GreedyRows(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            rows = scores[::n]
            best = rows.argmax(-1, keepdim=True)
            scores[::n] = torch.full_like(rows, float("-inf")).scatter_(-1, best, rows.gather(-1, best))
            return scores

    return GreedyRows()


class TransformersSampler(Sampler):
    name: ClassVar[str] = "transformers"

    def __init__(self, model_dir: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
                 model: Any = None, tokenizer: Any = None, chat: str = "auto", **options: Any):
        from selfimprove.chat import stop_token_ids, use_chat

        super().__init__(model_dir, device=device, **options)
        if model is not None:
            self.model, self.tok = model, tokenizer
        else:
            self.model, self.tok = load_model(model_dir, device, dtype, trust_remote_code)
        self.device = next(self.model.parameters()).device
        # model.chat: prompts rendered with the chat template; generation stops on EOS or the end-of-turn token
        self.chat = use_chat(chat, self.tok, where=str(model_dir))  # type: ignore[arg-type]
        #: keep generate's per-step logits for log-probs up to this size (else record them step by step)
        self.logits_budget_bytes = 256 * 2**20
        self.stop_ids = stop_token_ids(self.tok) if self.chat else [self.tok.eos_token_id]
        #: the prompt of a batch is computed once and its KV cache shared by the greedy answer and the k samples
        #: (the tiny model computes its own coupled positions, so it keeps generate's own prefill)
        self.share_prefix = getattr(self.model.config, "model_type", "") != "selfimprove_llama"
        #: the greedy answer decoded in the samples' call (``_greedy_rows``) rather than a call of its own; with the
        #: shared prompt only (the tiny default keeps its two calls, so its rounds' data do not change)
        self.greedy_with_samples = self.share_prefix
        self.prefill_tokens = self.decode_tokens = 0
        self.progress_desc = "sample"  # the progress bar's label; evaluate sets "evaluate"

    def prompt_text(self, problem: Problem) -> str:
        """What the model continues: the raw prompt, or its messages rendered with the generation prompt."""
        from selfimprove.chat import messages_of, render_prompt

        return render_prompt(self.tok, messages_of(problem.prompt, problem.messages)) if self.chat else problem.prompt

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any) -> TransformersSampler:
        return cls("<in-memory>", model=model, tokenizer=tokenizer)

    def _encode(self, prompts: list[str]) -> Any:
        self.tok.padding_side = "left"
        # a rendered chat prompt already holds the template's own special tokens (BOS included where it has one)
        return self.tok(prompts, return_tensors="pt", padding=True, add_special_tokens=not self.chat).to(self.device)

    def _prefill(self, enc: Any) -> Any:
        """The KV cache of every prompt token but the last, computed once for all the answers of a prompt;
        ``generate`` then runs the last prompt token itself (its logits pick the first answer token)."""
        import torch

        ids, mask = enc["input_ids"], enc["attention_mask"]
        if ids.shape[1] < 2:
            return None
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)  # as generate computes them (left padding)
        with torch.inference_mode():
            out = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1],
                             use_cache=True, logits_to_keep=1)
        self.prefill_tokens += int(mask[:, :-1].sum())
        return out.past_key_values

    def _generate(self, prompts: list[str], params: SamplingParams, do_sample: bool, n: int,
                  answer_tokens: int | None = None, min_tokens: int | None = None, enc: Any = None,
                  prefix: Any = None, greedy_first: bool = False) -> list[dict[str, Any]]:
        """Generate ``n`` completions per prompt. ``answer_tokens``: the problems declare their answer length
        (``meta.max_new_tokens``); reaching it ends the answer, so it counts as a natural stop.
        ``min_tokens`` (``meta.min_new_tokens``): fixed-width answers are decoded to their full width.
        ``prefix``: the prompts' KV cache from ``_prefill`` (copied here, repeated ``n`` times per prompt).
        ``greedy_first``: (sampling) the first of each prompt's ``n`` answers is its greedy one."""
        import copy

        import torch

        tok = self.tok
        enc = enc if enc is not None else self._encode(prompts)
        max_new = min(params.max_new_tokens, answer_tokens) if answer_tokens else params.max_new_tokens
        gen_kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            do_sample=do_sample,
            num_return_sequences=n,
            return_dict_in_generate=True,
            pad_token_id=tok.pad_token_id,
            eos_token_id=self.stop_ids if self.chat else tok.eos_token_id,
        )
        if min_tokens:
            gen_kwargs["min_new_tokens"] = min(min_tokens, max_new)
        if do_sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=tok)
        if greedy_first and do_sample:
            from transformers import LogitsProcessorList

            gen_kwargs["logits_processor"] = LogitsProcessorList([_greedy_rows(n)])
        # Log-probs from the raw logits generate computed anyway, when keeping them fits the budget (small
        # vocabularies, the tiny default: this halves the sampling time); else one teacher-forced pass in chunks.
        vocab = self.model.get_output_embeddings().weight.shape[0]
        keep = params.logprobs and enc["input_ids"].shape[0] * n * max_new * vocab * 4 <= self.logits_budget_bytes
        gen_kwargs["output_logits"] = keep
        if prefix is not None:
            cache = copy.deepcopy(prefix)
            if n > 1:
                cache.batch_repeat_interleave(n)
            gen_kwargs["cache"] = cache
        # a large vocabulary (SmolLM2: 49k) with many sequences: the chosen tokens' log-probs recorded step by step
        # (one step's logits held at a time) instead of keeping every step's logits or a second forward pass
        steps = _StepLogprobs(self.model) if params.logprobs and not keep else None
        try:
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kwargs)
        finally:
            if steps is not None:
                steps.remove()
        seqs = out.sequences[:, enc["input_ids"].shape[1]:]
        self.decode_tokens += int(seqs.numel())
        lps = None
        if params.logprobs and seqs.shape[1] and keep:
            with torch.inference_mode():
                logits = torch.stack(out.logits, dim=1).float()  # (sequences, steps, vocab), before any warper
                lps = torch.log_softmax(logits, dim=-1).gather(-1, seqs.unsqueeze(-1)).squeeze(-1).cpu()
        elif steps is not None and seqs.shape[1]:
            lps = steps.result(seqs)
        eos, pad = tok.eos_token_id, tok.pad_token_id
        stops = set(self.stop_ids)
        all_ids = seqs.tolist()  # one conversion per batch: per-row tensor indexing costs more than the decoding
        all_lps = None if lps is None else lps.tolist()
        cut: list[tuple[int, str]] = []
        for ids in all_ids:
            n_tok, finish = len(ids), "length"
            for j, t in enumerate(ids):
                if t in stops:
                    n_tok, finish = j, "stop"
                    break
            if finish == "length" and pad != eos:
                while n_tok > 0 and ids[n_tok - 1] == pad:
                    n_tok -= 1
            if finish == "length" and answer_tokens and n_tok >= answer_tokens:
                finish = "stop"
            cut.append((n_tok, finish))
        texts = tok.batch_decode([ids[:n] for ids, (n, _) in zip(all_ids, cut)], skip_special_tokens=True)
        results = []
        for i, ((n_tok, finish), text) in enumerate(zip(cut, texts)):
            if finish == "length" and params.stop and any(text.endswith(s) or s in text for s in params.stop):
                finish = "stop"
                for s in params.stop:
                    if s in text:
                        text = text[: text.index(s)]
            token_lps = None if all_lps is None else [round(x, 5) for x in all_lps[i][: n_tok + (1 if finish == "stop" else 0)]]
            results.append({"text": text, "n_tokens": n_tok, "finish_reason": finish, "token_logprobs": token_lps})
        return results

    def sample(self, problems: Sequence[Problem], params: SamplingParams, round: int, progress: bool = True) -> list[Completion]:
        import torch
        from tqdm.auto import tqdm

        torch.manual_seed(params.seed)
        self.prefill_tokens = self.decode_tokens = 0  # work done, for the sampler benchmark

        def answer_len(i: int) -> tuple[int, int]:
            m = problems[i].meta
            return int(m.get("max_new_tokens") or 0), int(m.get("min_new_tokens") or 0)

        # Batches never mix declared answer lengths, and similar prompt lengths keep padding small.
        order = sorted(range(len(problems)), key=lambda i: (answer_len(i), len(problems[i].prompt), i))
        per_batch = max(1, params.batch_size // max(1, params.n_per_problem))
        batches: list[list[int]] = []
        for i in order:
            if batches and len(batches[-1]) < per_batch and answer_len(batches[-1][0]) == answer_len(i):
                batches[-1].append(i)
            else:
                batches.append([i])
        out: dict[int, list[Completion]] = {}
        t0 = time.perf_counter()
        quiet = not progress or bool(os.environ.get("TQDM_DISABLE"))  # Ray workers set TQDM_DISABLE
        bar = tqdm(total=len(problems), desc=f"{self.progress_desc} r{round}", unit="prob", disable=quiet, leave=False)
        for idx in batches:
            prompts = [self.prompt_text(problems[i]) for i in idx]
            alen, amin = answer_len(idx[0])
            alen, amin = alen or None, amin or None
            per_problem: dict[int, list[dict[str, Any]]] = {i: [] for i in idx}
            enc = self._encode(prompts)
            prefix = self._prefill(enc) if self.share_prefix and (params.k or 0) + bool(params.greedy) > 1 else None
            merged = bool(params.greedy and params.k and prefix is not None and self.greedy_with_samples)
            if merged:  # one call: each prompt's first row greedy, then its k samples
                n = params.k + 1
                res = self._generate(prompts, params, do_sample=True, n=n, answer_tokens=alen, min_tokens=amin,
                                     enc=enc, prefix=prefix, greedy_first=True)
                for j, i in enumerate(idx):
                    per_problem[i] = [r | {"greedy": s == 0} for s, r in enumerate(res[j * n:(j + 1) * n])]
            if params.greedy and not merged:
                for i, res in zip(idx, self._generate(prompts, params, do_sample=False, n=1, answer_tokens=alen,
                                                      min_tokens=amin, enc=enc, prefix=prefix)):
                    per_problem[i].append(res | {"greedy": True})
            if params.k and not merged:
                res = self._generate(prompts, params, do_sample=True, n=params.k, answer_tokens=alen, min_tokens=amin,
                                     enc=enc, prefix=prefix)
                for j, i in enumerate(idx):
                    per_problem[i].extend(r | {"greedy": False} for r in res[j * params.k : (j + 1) * params.k])
            for i in idx:
                p = problems[i]
                out[i] = [  # built here from typed values: construct without re-validating 15k records a round
                    Completion.model_construct(
                        id=completion_id(p.id, s),
                        problem_id=p.id,
                        round=round,
                        sample_idx=s,
                        sampler=self.name,
                        **r,
                    )
                    for s, r in enumerate(per_problem[i])
                ]
            bar.update(len(idx))
        bar.close()
        log.info("sampled %d problems x %d in %.1fs", len(problems), params.n_per_problem, time.perf_counter() - t0)
        return [c for i in range(len(problems)) for c in out[i]]
