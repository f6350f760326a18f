"""Tests for the tiny coupled-position Llama and the character tokenizer (``selfimprove.models.tiny``).

Everything is built from a config in a few milliseconds; no download. Run: ``pytest tests/models -q``.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

import selfimprove.models  # noqa: F401  (registers the Auto classes)
from selfimprove.models import (
    ARITHMETIC_CHARS,
    TinyLlamaForCausalLM,
    build_char_tokenizer,
    build_tiny_model,
    coupled_position_ids,
)


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer(ARITHMETIC_CHARS)


def _scrambled_model(tok, seed: int = 0, scheme: str = "coupled"):
    """A model with large random weights, so greedy outputs depend on positions and are not all one token."""
    model = build_tiny_model(
        tok, layers=2, hidden=64, heads=4, intermediate=128, position_scheme=scheme, seed=seed
    )
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]) * 2.0)
    return model.eval()


def test_tokenizer_round_trip_and_specials(tok, tmp_path):
    text = "0123+987=01234567891"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == len(text) + 1
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2, 3)
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(text)["input_ids"] == ids
    assert again.decode(ids, skip_special_tokens=True) == text
    assert again.pad_token_id == 0 and again.eos_token_id == 2 and again.padding_side == "left"
    assert tok("7x")["input_ids"][-1] == tok.unk_token_id


def test_tokenizer_whitespace_is_a_character():
    t = build_char_tokenizer("ab \n")
    assert t.decode(t("a b\nba")["input_ids"], skip_special_tokens=True) == "a b\nba"


def test_coupled_ids_hand_checked(tok):
    # [BOS] 3 2 1 + 6 5 4 = 9 7 5 0  (reversed 123 + 456 = 579 with a fixed-width carry digit)
    ids = torch.tensor([tok("321+654=9750")["input_ids"]])
    assert coupled_position_ids(ids, [1, 14, 15]).tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4]]
    # Left padding resets too: padded and unpadded rows share ids on their real tokens.
    enc = tok(["1+2=", "321+654="], padding=True, return_tensors="pt")
    pos = coupled_position_ids(enc["input_ids"], [1, 14, 15], enc["attention_mask"])
    assert pos.tolist() == [[0, 0, 0, 0, 0, 1, 0, 1, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0]]
    # Tokens before any reset count from 1.
    assert coupled_position_ids(torch.tensor([[5, 6, 14, 7]]), [1, 14]).tolist() == [[1, 2, 0, 1]]


def test_model_uses_coupled_ids_in_forward(tok):
    model = _scrambled_model(tok)
    enc = tok(["321+654=97"], return_tensors="pt")
    pos = coupled_position_ids(enc["input_ids"], model.config.position_reset_token_ids)
    with torch.no_grad():
        implicit = model(**enc).logits
        explicit = model(**enc, position_ids=pos).logits
        standard = model(**enc, position_ids=torch.arange(enc["input_ids"].shape[1])[None]).logits
        no_mask = model(input_ids=enc["input_ids"]).logits
    assert torch.equal(implicit, explicit)
    assert torch.allclose(implicit, no_mask)  # no mask must not be read as packed sequences
    assert not torch.allclose(implicit, standard)


def test_backbone_alone_uses_coupled_ids(tok):
    """TRL's fused LM head calls the backbone directly, so the backbone must derive coupled ids itself."""
    model = _scrambled_model(tok)
    enc = tok(["321+654=97", "1+2="], padding=True, padding_side="right", return_tensors="pt")
    pos = coupled_position_ids(enc["input_ids"], model.config.position_reset_token_ids, enc["attention_mask"])
    with torch.no_grad():
        implicit = model.model(**enc).last_hidden_state
        explicit = model.model(**enc, position_ids=pos).last_hidden_state
    assert torch.equal(implicit, explicit)


def test_save_load_bit_identical(tok, tmp_path):
    model = _scrambled_model(tok, seed=3)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, TinyLlamaForCausalLM)
    assert loaded.config.position_reset_token_ids == model.config.position_reset_token_ids
    enc = tok(["12+34=", "99999+1="], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(model(**enc).logits, loaded(**enc).logits)


def _reference_greedy(model, input_ids, attention_mask, new_tokens: int) -> torch.Tensor:
    """Greedy decoding by full recomputation every step: no cache, ids from the model's own forward."""
    ids, mask = input_ids, attention_mask
    for _ in range(new_tokens):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


@pytest.mark.parametrize("scheme", ["coupled", "standard"])
def test_cached_generate_equals_full_recompute(tok, scheme):
    model = _scrambled_model(tok, seed=1, scheme=scheme)
    prompts = ["1+2=", "321+654=", "99+11=", "12345+67890="]
    enc = tok(prompts, padding=True, return_tensors="pt")
    n = 7
    ref = _reference_greedy(model, enc["input_ids"], enc["attention_mask"], n)
    with torch.no_grad():
        cached = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)
        uncached = model.generate(**enc, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=False)
    # min_new_tokens bans EOS; the reference may pick EOS, so compare where the reference did not.
    ok = ~(ref[:, -n:] == tok.eos_token_id).any(-1)
    assert ok.any()
    assert torch.equal(cached[ok], ref[ok])
    assert torch.equal(uncached, cached)
    # A row decoded alone (no padding) gives the same continuation as inside the padded batch.
    for i, p in enumerate(prompts):
        single = tok([p], return_tensors="pt")
        with torch.no_grad():
            alone = model.generate(**single, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        assert torch.equal(alone[0, -n:], cached[i, -n:])


def test_coupled_generation_differs_from_standard_ids(tok):
    """The ids really reach the cached decode: forcing standard ids changes some continuation."""
    model = _scrambled_model(tok, seed=2)
    enc = tok(["321+654=", "12345+67890=", "9+9="], padding=True, return_tensors="pt")
    ref = _reference_greedy(model, enc["input_ids"], enc["attention_mask"], 6)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    for _ in range(6):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            nxt = (
                model(input_ids=ids, attention_mask=mask, position_ids=pos)
                .logits[:, -1]
                .argmax(-1, keepdim=True)
            )
        ids, mask = torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1)
    assert not torch.equal(ids, ref)


def test_sampling_with_num_return_sequences(tok):
    model = _scrambled_model(tok, seed=4)
    enc = tok(["1+2=", "321+654="], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=5, do_sample=True, temperature=1.0, num_return_sequences=3)
    assert out.shape[0] == 6
    assert torch.equal(out[:3, : enc["input_ids"].shape[1]], enc["input_ids"][[0, 0, 0]])


def test_standard_saves_as_plain_llama(tok, tmp_path):
    model = build_tiny_model(tok, position_scheme="standard")
    assert type(model) is LlamaForCausalLM
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["architectures"] == ["LlamaForCausalLM"]
    assert "position_scheme" not in cfg
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is LlamaForCausalLM


def test_standard_tiny_config_serialises_as_llama(tok, tmp_path):
    from selfimprove.models import TinyLlamaConfig

    cfg = TinyLlamaConfig(vocab_size=16, hidden_size=32, num_attention_heads=2, position_scheme="standard")
    cfg.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "llama"


def test_coupled_model_config(tok):
    model = build_tiny_model(tok)
    cfg = model.config
    assert cfg.model_type == "selfimprove_llama" and cfg.position_scheme == "coupled"
    assert cfg.position_reset_token_ids == [
        tok.bos_token_id,
        tok.convert_tokens_to_ids("+"),
        tok.convert_tokens_to_ids("="),
    ]
    assert (
        cfg.tie_word_embeddings
        and model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    )
    assert cfg.attention_dropout == 0.0
    n = sum(p.numel() for p in model.parameters())
    assert 400_000 < n < 600_000  # 2 x 128, MLP 512: ~0.4 M with tied embeddings
    same = build_tiny_model(tok, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), same.parameters(), strict=True))


def test_it_trains(tok):
    """A few AdamW steps on right-padded prompt+answer batches lower the loss and move every weight."""
    torch.manual_seed(0)
    model = build_tiny_model(tok, seed=0).train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    texts = [f"{a}+{b}={str(a + b)[::-1]}" for a, b in [(1, 2), (3, 4), (5, 5), (12, 7), (9, 9), (21, 30)]]
    enc = tok(texts, padding=True, padding_side="right", return_tensors="pt")
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):  # few steps: enough to show learning, fast on one CPU thread
        loss = model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
