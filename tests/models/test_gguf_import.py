"""A real model enters as data: a GGUF file written here by the ``gguf`` package (a tiny random Llama and a BPE
tokenizer with a chat template, no download) is imported by the bootstrap stage into round 0 as an HF folder
whose logits are the original model's, DVC-versioned, and registered in MLflow as the model's first version."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

gguf = pytest.importorskip("gguf")

TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _permute(w, n_kv: int):  # HF -> GGUF order of the q/k rows (what llama.cpp's converter writes)
    return w.reshape(n_kv, 2, w.shape[0] // n_kv // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path: Path) -> object:
    """A 2-layer Llama (GQA: 4 heads, 2 KV heads) and a byte-level BPE tokenizer, as llama.cpp's converter lays
    them out; returns the HF model the file was written from."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(["What is 12 + 34? Answer with only the number. 46 0123456789"] * 50, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = tk.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda x: x[1])]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(tk.to_str())["model"]["merges"]]
    cfg = LlamaConfig(vocab_size=len(tokens), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                      tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    w.add_bos_token_id(vocab["<|im_start|>"])
    w.add_eos_token_id(vocab["<|im_end|>"])
    w.add_pad_token_id(vocab["<|endoftext|>"])
    w.add_chat_template(TEMPLATE)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    names = {"self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate",
             "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm"}
    for i in range(2):
        p = f"model.layers.{i}."
        w.add_tensor(f"blk.{i}.attn_q.weight", _permute(sd[p + "self_attn.q_proj.weight"], 4))
        w.add_tensor(f"blk.{i}.attn_k.weight", _permute(sd[p + "self_attn.k_proj.weight"], 2))
        for hf, gg in names.items():
            w.add_tensor(f"blk.{i}.{gg}.weight", sd[p + hf + ".weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return model


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_gguf(path)


def test_find_gguf_names_what_it_looked_at(gguf_file, tmp_path: Path) -> None:
    from selfimprove.models.importer import find_gguf

    path, _ = gguf_file
    assert find_gguf(str(path)) == (path.parent, path.name)
    assert find_gguf(str(path.parent)) == (path.parent, path.name)
    two = tmp_path / "two"
    two.mkdir()
    (two / "a.gguf").write_bytes(b"x")
    (two / "b.gguf").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="holds 2 .gguf files .*model.gguf_file"):
        find_gguf(str(two))
    with pytest.raises(FileNotFoundError, match="no installed package .*make real-model"):
        find_gguf("no_such_model_package")


def test_bootstrap_imports_the_gguf_as_round_0s_folder(gguf_file, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helpers import ROOT
    from selfimprove.params import load_config
    from selfimprove.io import verify_manifest
    from selfimprove.paths import RoundPaths
    from selfimprove.stages.bootstrap import run_bootstrap
    from selfimprove.tracker import NullTracker

    path, original = gguf_file
    os.chdir(tmp_path)
    config = load_config(ROOT / "params.yaml", ["model.source=gguf", f"model.path={path}", "model.ensemble=1",
                                                "model.chat=always", "bootstrap.difficulties=[]",
                                                "bootstrap.early_stop=null", "sample.views=[]"])
    paths = RoundPaths.for_round(config, "r0", tmp_path)
    report = run_bootstrap(config, paths, NullTracker())
    model_dir = paths.model
    assert {"config.json", "model.safetensors", "manifest.json"} <= {p.name for p in model_dir.iterdir()}
    assert "quantization_config" not in json.loads((model_dir / "config.json").read_text())
    verify_manifest(model_dir, deep=True)
    assert report.details["imported"]["origin"] == str(path)
    assert report.metrics["bootstrap/parameters"] == sum(p.numel() for p in original.parameters())
    imported = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    ids = torch.tensor([[5, 7, 9, 11, 13]])
    with torch.inference_mode():
        assert torch.equal(imported(ids).logits, original(ids).logits)
    assert AutoTokenizer.from_pretrained(model_dir).chat_template == TEMPLATE


@pytest.mark.slow  # minutes of orchestration: .ci/run runs it
def test_a_run_from_a_gguf_registers_round_0_as_the_first_version(gguf_file, tmp_path: Path, prefect_backend) -> None:
    from mlflow import MlflowClient

    from helpers import make_project, run_cli

    path, _ = gguf_file
    proj = make_project(tmp_path / "proj")
    run_cli(["run", "--name", "from-gguf", "-S", "model.source=gguf", "-S", f"model.path={path}",
             "-S", "model.chat=always", "-S", "bootstrap.difficulties=[]", "-S", "tracking.registered_model=tiny-gguf"],
            proj, timeout=900)
    client = MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlruns.db'}")
    versions = sorted(client.search_model_versions("name='tiny-gguf'"), key=lambda v: int(v.version))
    assert str(versions[0].version) == "1" and versions[0].tags["selfimprove.round"] == "0", versions[0].tags
    assert "Round 0 (r0)" in versions[0].description
    import subprocess

    from selfimprove.experiments import experiment_refs

    lock = subprocess.run(["git", "show", f"{experiment_refs(proj, 'from-gguf')['from-gguf']}:dvc.lock"], cwd=proj,
                          capture_output=True, text=True, check=True).stdout
    assert "runs/r0/model" in lock and ".dir" in lock  # the imported folder is a DVC output, weights hashed
