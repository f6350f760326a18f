"""The transformers sampler on a standard (Llama) model: the prompt computed once and shared by all answers gives the
answers generate gives without sharing, and log-probs recorded step by step equal a teacher-forced pass; the work
is counted (prompt tokens once per problem, not once per answer)."""

from __future__ import annotations

import pytest

from selfimprove.samplers.base import SamplingParams
from selfimprove.types import Problem


@pytest.fixture(scope="module")
def llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from selfimprove.models import build_char_tokenizer

    tok = build_char_tokenizer("0123456789+= abcdefghij")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def problems() -> list[Problem]:
    prompts = ["12+3=", "7+88=", "a b c d e f=", "999+1=", "4="]
    return [Problem(id=f"p{i}", prompt=p, answer="0") for i, p in enumerate(prompts)]


def sampler(llama, share: bool, budget: int):
    from selfimprove.samplers.hf import TransformersSampler

    model, tok = llama
    s = TransformersSampler.from_model(model, tok)
    s.share_prefix, s.logits_budget_bytes = share, budget
    return s


def test_shared_prompt_gives_the_same_answers_and_counts_the_prompt_once(llama) -> None:
    params = SamplingParams(k=4, greedy=True, temperature=1.0, max_new_tokens=6, batch_size=64, seed=3, logprobs=True)
    plain = sampler(llama, share=False, budget=2**30).sample(problems(), params, round=1, progress=False)
    shared_s = sampler(llama, share=True, budget=2**30)
    shared_s.greedy_with_samples = False  # the same two calls as without sharing: the same random draws
    shared = shared_s.sample(problems(), params, round=1, progress=False)
    assert [c.text for c in shared if c.greedy] == [c.text for c in plain if c.greedy]
    same = sum(a.text == b.text for a, b in zip(shared, plain)) / len(plain)
    assert same >= 0.9, same  # sampled answers: the same draws from (to rounding) the same distribution
    for a, b in zip(shared, plain):
        if a.text == b.text:
            assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
    prompt_tokens = sum(len(p.prompt) + 1 for p in problems())  # characters + BOS
    # once per problem (all but the last token: generate runs that one per sequence), not once per answer
    assert shared_s.prefill_tokens == prompt_tokens - len(problems())


def test_step_by_step_logprobs_equal_a_teacher_forced_pass(llama) -> None:
    import torch

    model, tok = llama
    params = SamplingParams(k=3, greedy=False, temperature=1.0, max_new_tokens=8, batch_size=64, seed=5, logprobs=True)
    streamed = sampler(llama, share=True, budget=0).sample(problems(), params, round=1, progress=False)
    by_id = {p.id: p for p in problems()}
    checked = 0
    for c in streamed:
        prompt = tok(by_id[c.problem_id].prompt, return_tensors="pt")["input_ids"]
        gen = tok(c.text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if gen.shape[1] != c.n_tokens or not c.n_tokens:  # an untrained model also draws special tokens
            continue
        checked += 1
        ids = torch.cat([prompt, gen], dim=1)
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, prompt.shape[1] - 1 : -1].float(), dim=-1)
        want = logp.gather(-1, gen[0].unsqueeze(-1)).squeeze(-1).tolist()
        assert c.token_logprobs[: len(want)] == pytest.approx(want, abs=1e-4), c.text
    assert checked >= 5, checked


def test_the_greedy_answer_decoded_in_the_samples_call_is_the_greedy_answer(llama) -> None:
    """One ``generate`` call for the greedy answer and the k samples (the first row of each prompt keeps only its
    argmax): the greedy texts and log-probs equal a ``do_sample=False`` call's, samples still vary, one call per
    batch instead of two."""
    from unittest import mock

    params = SamplingParams(k=4, greedy=True, temperature=1.3, top_p=0.9, max_new_tokens=6, batch_size=64, seed=1,
                            logprobs=True)
    two = sampler(llama, share=True, budget=0)
    two.greedy_with_samples = False
    apart = two.sample(problems(), params, round=1, progress=False)
    one = sampler(llama, share=True, budget=0)
    assert one.greedy_with_samples
    with mock.patch.object(type(one), "_generate", autospec=True, side_effect=type(one)._generate) as gen:
        merged = one.sample(problems(), params, round=1, progress=False)
    assert gen.call_count == 1 and gen.call_args.kwargs["greedy_first"] and gen.call_args.kwargs["n"] == 5
    assert [c.sample_idx for c in merged] == [c.sample_idx for c in apart]
    assert [c.greedy for c in merged] == [c.greedy for c in apart]
    g_apart = [c for c in apart if c.greedy]
    g_merged = [c for c in merged if c.greedy]
    assert [c.text for c in g_merged] == [c.text for c in g_apart]
    for a, b in zip(g_merged, g_apart):
        assert a.token_logprobs == pytest.approx(b.token_logprobs, abs=1e-4)
        assert a.finish_reason == b.finish_reason and a.n_tokens == b.n_tokens
    sampled = [c.text for c in merged if not c.greedy]
    assert len(set(sampled)) > len(problems()), "the samples are still drawn"
