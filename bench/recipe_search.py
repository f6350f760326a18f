"""Recipe search for the embedded demo: bootstrap a tiny coupled-position Llama on easy additions, then run
label-free self-improvement rounds, and measure accuracy, label precision and CPU time per phase.

It uses the product's own model and problem code (``selfimprove.models``, ``selfimprove.problems.arithmetic``)
with a plain torch loop that does what TRL's SFT does in the product: AdamW (betas 0.9/0.999, no weight decay,
clip 1.0), linear warmup then cosine decay to 0, loss on completion + EOS only, epoch-shuffled batches of one
dataset whose composition realises the real-data mix. Labelling uses ``model.generate`` (batched, KV cache):
one greedy answer plus k samples at temperature T, per model and per view (a+b, b+a). Gold answers are read
only to report label precision and accuracy.

Run (one process at a time on the shared machine; each uses one thread)::

    .venv/bin/python bench/recipe_search.py chain --tag final --seeds 0 1 2      # the recommended recipe
    .venv/bin/python bench/recipe_search.py chain --tag single --seeds 0 --set n_models=1 --set k_samples=4
    .venv/bin/python bench/recipe_search.py boot --tag b12 --seeds 0 1 2 --set boot_digits=[1,2]

Results: ``bench/results/recipe_<tag>.json`` (one entry per seed, every round) and a markdown summary
(stdout and ``recipe_<tag>.md``).
Bootstrap models are cached in ``$RECIPE_CACHE`` (default ``/tmp/recipe_cache``) keyed by their settings, and
their recorded CPU time is reused so a chain's total stays honest.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from selfimprove.models import ARITHMETIC_CHARS, build_char_tokenizer, build_tiny_model  # noqa: E402
from selfimprove.problems.arithmetic import ArithmeticProblems  # noqa: E402
from selfimprove.types import Problem  # noqa: E402

log = logging.getLogger("recipe")
RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("RECIPE_CACHE", "/tmp/recipe_cache"))


@dataclass
class Recipe:
    """Every knob of one chain. The defaults are the recommended recipe (docs/recipe.md); --set overrides."""

    # problem format
    answer_width: str = "fixed"
    reverse: bool = True
    # model
    layers: int = 2
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    rope_theta: float = 10_000.0
    position_scheme: str = "coupled"
    # bootstrap (round 0)
    boot_digits: list[int] = field(default_factory=lambda: [1, 2, 3])
    boot_examples: int = 20_000  # labelled rows per difficulty (small difficulties repeat)
    boot_max_steps: int = 2000  # cosine horizon; early stop ends it sooner
    boot_lr: float = 2e-3
    boot_batch: int = 64
    boot_warmup: int = 100
    boot_eval_every: int = 125
    boot_eval_n: int = 100  # per difficulty, fresh training-partition problems (not the eval set)
    boot_target: float = 0.99  # early stop when every bootstrap difficulty reaches this
    n_models: int = 3  # >1: independently seeded models that vote together
    # rounds
    schedule: list[list[int]] = field(
        default_factory=lambda: [[4], [4, 5]]
    )  # difficulties labelled per round
    curriculum: bool = False  # if True: label one level per round, advance when acceptance >= advance_at
    curriculum_rounds: int = 3
    advance_at: float = 0.3
    prompts: int = 4000  # per labelled difficulty per round
    k_samples: int = 0
    temperature: float = 1.0
    greedy: bool = True
    views: bool = False  # also ask b+a; its answers vote with a+b's
    train_views: bool = False  # add the accepted label for b+a as a training row too
    prefix_view: bool = (
        True  # also require the low L-1 digits to match the models' answers to the truncated problem
    )
    shadow_prefix: bool = True  # report the shadow rules with the prefix check added
    vote_threshold: float = 1.0  # majority share of all votes (invalid answers count against)
    min_model_agree: int = 0  # if > 0: at least this many models' greedy answers must equal the label
    mix_real: float = 0.5  # share of real (bootstrap) rows in a round's dataset
    accumulate: bool = True  # keep earlier rounds' accepted labels
    ft_steps: int = 200
    ft_lr: float = 1e-3
    ft_warmup: int = 50
    ft_batch: int = 64
    bag_fraction: float = 1.0  # < 1: models 1.. train on a random share of the self-labels (decorrelation)
    init: str = "continue"  # "continue" from the previous round, or "bootstrap" (restart from round 0)
    # evaluation
    eval_n: int = 300
    eval_digits: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 7])
    gen_batch: int = 1024
    force_width: bool = True  # decode exactly L+1 tokens (min_new_tokens) in labelling and evaluation

    def boot_key(self, model_seed: int, data_seed: int) -> str:
        keys = [
            "answer_width", "reverse", "layers", "hidden", "heads", "intermediate", "rope_theta",
            "position_scheme", "boot_digits", "boot_examples", "boot_max_steps", "boot_lr", "boot_batch",
            "boot_warmup", "boot_eval_every", "boot_eval_n", "boot_target",
        ]  # fmt: skip
        blob = json.dumps(
            {k: getattr(self, k) for k in keys} | {"m": model_seed, "d": data_seed}, sort_keys=True
        )
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- data and batches
class Codec:
    """Char <-> id without the tokenizer call overhead; checked against the real tokenizer once."""

    def __init__(self) -> None:
        self.tok = build_char_tokenizer(ARITHMETIC_CHARS)
        self.vocab = self.tok.get_vocab()
        self.bos, self.eos, self.pad = self.tok.bos_token_id, self.tok.eos_token_id, self.tok.pad_token_id
        probe = "321+654=9750"
        assert self.tok(probe)["input_ids"] == self.encode(probe)

    def encode(self, text: str) -> list[int]:
        return [self.bos] + [self.vocab[c] for c in text]

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        out = []
        for i in ids:
            if i == self.eos or i == self.pad:
                break
            out.append(inv.get(i, "?") if i >= 4 else "?")
        return "".join(out)


@dataclass
class Row:
    prompt: str
    completion: str
    difficulty: int
    origin: str  # "real" or "self"
    correct: bool = True


class Batcher:
    """Epoch-shuffled, right-padded batches; labels only on completion + EOS (what TRL's SFT does)."""

    def __init__(self, rows: list[Row], codec: Codec, batch: int, seed: int):
        self.rows, self.codec, self.batch = rows, codec, batch
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.encoded = [
            (codec.encode(r.prompt + r.completion) + [codec.eos], len(r.prompt) + 1) for r in rows
        ]

    def next(self) -> dict[str, torch.Tensor]:
        idx = []
        while len(idx) < self.batch:
            if not self.order:
                self.order = list(range(len(self.rows)))
                self.rng.shuffle(self.order)
            idx.append(self.order.pop())
        seqs = [self.encoded[i] for i in idx]
        width = max(len(s) for s, _ in seqs)
        ids = torch.full((len(seqs), width), self.codec.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for j, (s, n_prompt) in enumerate(seqs):
            ids[j, : len(s)] = torch.tensor(s)
            mask[j, : len(s)] = 1
            labels[j, n_prompt : len(s)] = ids[j, n_prompt : len(s)]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    """Linear warmup, then cosine to 0 at ``total`` (transformers' ``cosine`` schedule)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train(
    model: Any,
    batcher: Batcher,
    steps: int,
    lr: float,
    warmup: int,
    early_stop: Any = None,
    every: int = 250,
) -> tuple[int, list[dict[str, Any]]]:
    """Train ``steps`` steps, or until ``early_stop()`` returns True at a checkpoint.

    Returns the steps done and the checkpoint log."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    history = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, warmup, lr)
        batch = batcher.next()
        loss = model(**batch, use_cache=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if early_stop is not None and (step + 1) % every == 0:
            done, info = early_stop()
            history.append({"step": step + 1, "loss": round(loss.item(), 4), **info})
            log.info("  step %d loss %.4f %s", step + 1, loss.item(), info)
            model.train()
            if done:
                return step + 1, history
    return steps, history


# ----------------------------------------------------------------------------- generation
@torch.no_grad()
def generate(
    model: Any,
    codec: Codec,
    prompts: list[str],
    new_tokens: int,
    n_samples: int = 0,
    temperature: float = 1.0,
    greedy: bool = True,
    gen_batch: int = 1024,
    force: bool = False,
) -> list[list[str]]:
    """For each prompt: [greedy answer] + n_samples sampled answers (text up to EOS).

    ``force`` bans EOS until ``new_tokens`` tokens are out (``min_new_tokens``): the fixed-width format says
    how long an answer is, so decoding need not trust the model to stop."""
    model.eval()
    out: list[list[str]] = [[] for _ in prompts]
    # Group by prompt length so a batch needs no padding (all problems of one difficulty share it).
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for idxs in by_len.values():
        for s in range(0, len(idxs), gen_batch):
            chunk = idxs[s : s + gen_batch]
            enc = torch.tensor([codec.encode(prompts[i]) for i in chunk])
            mask = torch.ones_like(enc)
            width = enc.shape[1]
            common = dict(max_new_tokens=new_tokens, pad_token_id=codec.pad, eos_token_id=codec.eos)
            if force:
                common["min_new_tokens"] = new_tokens
            if greedy:
                g = model.generate(input_ids=enc, attention_mask=mask, do_sample=False, **common)
                for j, i in enumerate(chunk):
                    out[i].append(codec.decode(g[j, width:].tolist()))
            if n_samples:
                sub = max(1, gen_batch // n_samples)
                for t in range(0, len(chunk), sub):
                    part = chunk[t : t + sub]
                    e = enc[t : t + sub]
                    g = model.generate(
                        input_ids=e,
                        attention_mask=torch.ones_like(e),
                        do_sample=True,
                        temperature=temperature,
                        top_k=0,
                        top_p=1.0,
                        num_return_sequences=n_samples,
                        **common,
                    )
                    for j, i in enumerate(part):
                        for r in range(n_samples):
                            out[i].append(codec.decode(g[j * n_samples + r, width:].tolist()))
    return out


def evaluate(
    models: list[Any], codec: Codec, evals: dict[int, list[Problem]], gen_batch: int, force: bool = False
) -> list[dict[int, float]]:
    """Greedy exact-match accuracy per difficulty, per model."""
    res = []
    for m in models:
        acc = {}
        for d, probs in evals.items():
            answers = generate(m, codec, [p.prompt for p in probs], d + 1, gen_batch=gen_batch, force=force)
            acc[d] = sum(a[0] == p.answer for a, p in zip(answers, probs, strict=True)) / len(probs)
        res.append(acc)
    return res


# ----------------------------------------------------------------------------- bootstrap
def bootstrap(
    r: Recipe, ps: ArithmeticProblems, codec: Codec, model_seed: int, data_seed: int
) -> tuple[Any, dict[str, Any]]:
    """Train (or load from cache) one bootstrap model; returns it and its record (steps, CPU-s, dev acc)."""
    key = r.boot_key(model_seed, data_seed)
    path = CACHE / key
    if (path / "record.json").exists():
        model = AutoModelForCausalLM.from_pretrained(path)
        rec = json.loads((path / "record.json").read_text())
        log.info("bootstrap %s cached: %s", key, {k: rec[k] for k in ("steps", "cpu_s")})
        return model, rec
    t0 = time.process_time()
    model = build_tiny_model(
        codec.tok,
        layers=r.layers,
        hidden=r.hidden,
        heads=r.heads,
        intermediate=r.intermediate,
        position_scheme=r.position_scheme,  # type: ignore[arg-type]
        rope_theta=r.rope_theta,
        seed=model_seed,
    )
    rows = [
        Row(p.prompt, p.solution or "", int(p.difficulty or 0), "real")
        for p in ps.labelled(r.boot_examples, r.boot_digits, seed=data_seed)
    ]
    batcher = Batcher(rows, codec, r.boot_batch, seed=data_seed)
    dev = {d: ps.training_pool(r.boot_eval_n, [d], seed=10_000 + data_seed, round=0) for d in r.boot_digits}

    def stop() -> tuple[bool, dict[str, Any]]:
        acc = evaluate([model], codec, dev, r.gen_batch, r.force_width)[0]
        return min(acc.values()) >= r.boot_target, {"dev_acc": acc}

    steps, hist = train(model, batcher, r.boot_max_steps, r.boot_lr, r.boot_warmup, stop, r.boot_eval_every)
    cpu = time.process_time() - t0
    rec = {"key": key, "steps": steps, "cpu_s": round(cpu, 1), "history": hist, "model_seed": model_seed}
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    (path / "record.json").write_text(json.dumps(rec))
    log.info("bootstrap %s: %d steps, %.1f CPU-s", key, steps, cpu)
    return model, rec


# ----------------------------------------------------------------------------- labelling and filtering
def label_round(
    r: Recipe,
    ps: ArithmeticProblems,
    codec: Codec,
    models: list[Any],
    problems: list[Problem],
    sample_seed: int,
) -> tuple[list[Row], dict[str, Any]]:
    """Label-free filter: every model answers every view (greedy + k samples); accept the majority answer when
    its share of all votes reaches ``vote_threshold`` (and enough models' greedy answers agree)."""
    t0 = time.process_time()
    torch.manual_seed(sample_seed)
    views = [problems] + ([[ps.swap_operands(p) for p in problems]] if r.views else [])
    # votes[i] = (model index, view index, is_greedy, answer) for every answer given to problem i
    votes: list[list[tuple[int, int, bool, str]]] = [[] for _ in problems]
    for j, m in enumerate(models):
        for v, vp in enumerate(views):
            by_d: dict[int, list[int]] = {}
            for i, p in enumerate(vp):
                by_d.setdefault(int(p.difficulty or 0), []).append(i)
            for d, idxs in by_d.items():
                ans = generate(
                    m,
                    codec,
                    [vp[i].prompt for i in idxs],
                    d + 1,
                    r.k_samples,
                    r.temperature,
                    r.greedy,
                    r.gen_batch,
                    r.force_width,
                )
                for i, a in zip(idxs, ans, strict=True):
                    votes[i].extend((j, v, r.greedy and n == 0, x) for n, x in enumerate(a))
    # Prefix view: the low L-1 digits of a+b depend only on the low L-1 digits of a and b, so the models'
    # greedy answers to that (easier) truncated problem must agree with the label's first L-1 characters.
    prefix_answers: list[list[str]] = [[] for _ in problems]
    if r.prefix_view or r.shadow_prefix:
        if not r.reverse:
            raise ValueError("prefix_view assumes reversed operands")
        by_d = {}
        for i, p in enumerate(problems):
            if (p.difficulty or 0) >= 2:
                by_d.setdefault(int(p.difficulty or 0), []).append(i)
        for m in models:
            for d, idxs in by_d.items():
                sub = []
                for i in idxs:
                    ra, rb = problems[i].prompt[:-1].split("+")
                    sub.append(f"{ra[: d - 1]}+{rb[: d - 1]}=")
                ans = generate(m, codec, sub, d, 0, 1.0, True, r.gen_batch, r.force_width)
                for i, a in zip(idxs, ans, strict=True):
                    prefix_answers[i].append(a[0][: d - 1])
    t_label = time.process_time() - t0
    t1 = time.process_time()
    rows: list[Row] = []
    per_d: dict[int, dict[str, Any]] = {}
    for idx, (p, vs) in enumerate(zip(problems, votes, strict=True)):
        d = int(p.difficulty or 0)
        st = per_d.setdefault(d, {"n": 0, "accepted": 0, "correct": 0, "greedy_correct": 0, "shadow": {}})
        st["n"] += 1
        regex = re.compile(p.meta["answer_regex"])
        answers = [x for _, _, _, x in vs]
        greedy0 = [x for j, v, g, x in vs if g and v == 0]  # one per model, main view
        st["greedy_correct"] += bool(greedy0) and greedy0[0] == p.answer
        valid = [x for x in answers if regex.fullmatch(x)]
        label, count = Counter(valid).most_common(1)[0] if valid else ("", 0)
        accept = bool(valid) and count / len(answers) >= r.vote_threshold - 1e-9
        prefix_ok = all(x == label[: d - 1] for x in prefix_answers[idx]) if d >= 2 else True
        if accept and r.prefix_view:
            accept = prefix_ok
        if accept and r.min_model_agree:
            accept = sum(g == label for g in greedy0) >= r.min_model_agree
        ok = label == p.answer  # gold read only for the report
        shadows = shadow_rules(vs, label, valid, answers, len(models))
        if r.shadow_prefix:
            shadows.update({f"{k}+prefix": v and prefix_ok for k, v in list(shadows.items())})
        for name, passed in shadows.items():
            sh = st["shadow"].setdefault(name, [0, 0])
            sh[0] += passed
            sh[1] += passed and ok
        if not accept:
            continue
        st["accepted"] += 1
        st["correct"] += ok
        if not ok and len(st.setdefault("wrong_examples", [])) < 20:
            st["wrong_examples"].append({"prompt": p.prompt, "label": label, "gold": p.answer})
        rows.append(Row(p.prompt, label, d, "self", ok))
        if r.train_views:
            v = ps.swap_operands(p)
            rows.append(Row(v.prompt, label, d, "self", ok))
    t_filter = time.process_time() - t1
    stats = {
        str(d): {
            **{k: v for k, v in st.items() if k != "shadow"},
            "accept_rate": round(st["accepted"] / st["n"], 4),
            "precision": round(st["correct"] / st["accepted"], 4) if st["accepted"] else None,
            "greedy_acc": round(st["greedy_correct"] / st["n"], 4),
            "shadow": {
                k: [round(a / st["n"], 4), round(c / a, 4) if a else None]
                for k, (a, c) in st["shadow"].items()
            },
        }
        for d, st in sorted(per_d.items())
    }
    return rows, {
        "label_cpu_s": round(t_label, 2),
        "filter_cpu_s": round(t_filter, 3),
        "by_difficulty": stats,
    }


def shadow_rules(
    vs: list[tuple[int, int, bool, str]], label: str, valid: list[str], answers: list[str], n_models: int
) -> dict[str, bool]:
    """Alternative label-free rules evaluated on the same votes (report only: accept share and precision)."""
    if not valid:
        return {}
    greedy_main = [x for j, v, g, x in vs if g and v == 0]
    greedy_all = [x for j, v, g, x in vs if g]
    own0 = [x for j, v, g, x in vs if j == 0]
    out = {
        "unanimous": all(x == label for x in answers),
        "share>=0.8": sum(x == label for x in answers) >= 0.8 * len(answers),
        "greedy_all_models": bool(greedy_main) and all(x == label for x in greedy_main),
        "greedy_all_views": bool(greedy_all) and all(x == label for x in greedy_all),
        "model0_unanimous": all(x == label for x in own0),
    }
    if n_models >= 2:
        out["greedy_majority"] = sum(x == label for x in greedy_main) * 2 > n_models
        out["greedy_m0_m1"] = greedy_main[0] == greedy_main[1] == label
        out["model0_unanimous+greedy_majority"] = out["model0_unanimous"] and out["greedy_majority"]
    return out


# ----------------------------------------------------------------------------- one chain
def run_chain(r: Recipe, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    codec = Codec()
    ps = ArithmeticProblems(reverse=r.reverse, answer_width=r.answer_width)  # type: ignore[arg-type]
    evals = {d: ps.eval_set(r.eval_n, [d], seed=0) for d in r.eval_digits}
    models, boot_recs = [], []
    for j in range(r.n_models):
        m, rec = bootstrap(r, ps, codec, model_seed=1000 * j + seed, data_seed=1000 * j + seed)
        models.append(m)
        boot_recs.append(rec)
    boot_states = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    t0 = time.process_time()
    acc0 = evaluate(models, codec, evals, r.gen_batch, r.force_width)
    rounds: list[dict[str, Any]] = [
        {
            "round": 0,
            "labelled": r.boot_digits,
            "acc": acc0,
            "train_cpu_s": round(sum(b["cpu_s"] for b in boot_recs), 1),
            "train_steps": [b["steps"] for b in boot_recs],
            "eval_cpu_s": round(time.process_time() - t0, 2),
        }
    ]
    log.info("seed %d round 0: %s", seed, fmt_acc(acc0[0]))
    real_pool = [
        Row(p.prompt, p.solution or "", int(p.difficulty or 0), "real")
        for p in ps.labelled(r.boot_examples, r.boot_digits, seed=seed)
    ]
    accepted: list[Row] = []
    level = max(r.boot_digits) + 1
    n_rounds = r.curriculum_rounds if r.curriculum else len(r.schedule)
    for rnd in range(1, n_rounds + 1):
        digits = [level] if r.curriculum else r.schedule[rnd - 1]
        problems = ps.training_pool(r.prompts * len(digits), digits, seed=seed, round=rnd)
        new_rows, lab = label_round(r, ps, codec, models, problems, sample_seed=seed * 100 + rnd)
        accepted = (accepted if r.accumulate else []) + new_rows
        n_self = len(accepted)
        n_real = round(n_self * r.mix_real / max(1e-9, 1 - r.mix_real)) if n_self else 0
        rng = random.Random(f"mix/{seed}/{rnd}")
        data = accepted + rng.sample(real_pool, min(n_real, len(real_pool)))
        t1 = time.process_time()
        steps = 0
        if n_self:
            for j, m in enumerate(models):
                if r.init == "bootstrap":
                    m.load_state_dict(boot_states[j])
                rows_j = data
                if r.bag_fraction < 1.0 and j > 0:
                    # Voters see different random subsets of the self-labels: keeps their errors apart.
                    bag = random.Random(f"bag/{seed}/{rnd}/{j}")
                    selfs = [x for x in data if x.origin == "self"]
                    rows_j = bag.sample(selfs, max(1, int(len(selfs) * r.bag_fraction))) + [
                        x for x in data if x.origin == "real"
                    ]
                steps, _ = train(m, Batcher(rows_j, codec, r.ft_batch, seed=seed * 100 + rnd + j), r.ft_steps,
                                 r.ft_lr, r.ft_warmup)  # fmt: skip
        t_train = time.process_time() - t1
        t2 = time.process_time()
        acc = evaluate(models, codec, evals, r.gen_batch, r.force_width)
        t_eval = time.process_time() - t2
        rounds.append(
            {
                "round": rnd,
                "labelled": digits,
                **lab,
                "n_self_rows": n_self,
                "n_real_rows": len(data) - n_self,
                "self_precision_all": round(sum(x.correct for x in accepted) / n_self, 4) if n_self else None,
                "train_steps": steps,
                "train_cpu_s": round(t_train, 1),
                "eval_cpu_s": round(t_eval, 2),
                "acc": acc,
            }
        )
        log.info(
            "seed %d round %d labelled %s accept/prec %s | %s",
            seed,
            rnd,
            digits,
            {d: (s["accept_rate"], s["precision"]) for d, s in lab["by_difficulty"].items()},
            fmt_acc(acc[0]),
        )
        if r.curriculum:
            rate = lab["by_difficulty"][str(level)]["accept_rate"]
            if rate >= r.advance_at:
                level += 1
    return {"seed": seed, "boot": boot_recs, "rounds": rounds}


# ----------------------------------------------------------------------------- reporting
def fmt_acc(acc: dict[int, float]) -> str:
    return " ".join(f"{d}:{v:.2f}" for d, v in sorted(acc.items()))


def summarise(tag: str, recipe: Recipe, chains: list[dict[str, Any]]) -> str:
    first = max(recipe.boot_digits) + 1
    lines = [f"### {tag}", ""]
    for ch in chains:
        lines.append(f"seed {ch['seed']}")
        digits = sorted(ch["rounds"][0]["acc"][0])
        lines.append("| round | labelled | accept | precision | train CPU-s | label CPU-s | " +
                     " | ".join(f"{d}d" for d in digits) + " |")  # fmt: skip
        lines.append("|" + "---|" * (6 + len(digits)))
        for rd in ch["rounds"]:
            by = rd.get("by_difficulty", {})
            accept = " ".join(f"{d}:{s['accept_rate']:.2f}" for d, s in by.items()) or "-"
            prec = (
                " ".join(
                    f"{d}:{s['precision'] if s['precision'] is not None else '-'}" for d, s in by.items()
                )
                or "-"
            )
            a = rd["acc"]
            cells = " | ".join(
                "/".join(f"{m[d] if isinstance(m, dict) and d in m else m[str(d)]:.2f}" for m in a)
                for d in digits
            )
            lines.append(f"| {rd['round']} | {rd['labelled']} | {accept} | {prec} | {rd['train_cpu_s']} | "
                         f"{rd.get('label_cpu_s', '-')} | {cells} |")  # fmt: skip
        total = sum(rd["train_cpu_s"] + rd["eval_cpu_s"] + rd.get("label_cpu_s", 0) for rd in ch["rounds"])
        a0, aN = ch["rounds"][0]["acc"][0], ch["rounds"][-1]["acc"][0]
        g = lambda acc, d: acc.get(d, acc.get(str(d), 0.0))  # noqa: E731
        ok = g(a0, first) < 0.95 <= g(aN, first) and g(aN, first + 1) > g(a0, first + 1)
        verdict = "PASS" if ok else "FAIL"
        lines.append(
            f"total ML CPU-s {total:.0f}; criterion ({first}d: {g(a0, first):.2f} -> {g(aN, first):.2f}, "
            f"{first + 1}d: {g(a0, first + 1):.2f} -> {g(aN, first + 1):.2f}): {verdict}"
        )
        lines.append("")
    return "\n".join(lines)


def parse_sets(sets: list[str], recipe: Recipe) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    changes = {}
    for s in sets:
        k, _, v = s.partition("=")
        if k not in fields:
            raise SystemExit(f"unknown recipe field {k!r}")
        try:
            changes[k] = json.loads(v)
        except json.JSONDecodeError:
            changes[k] = v
    return dataclasses.replace(recipe, **changes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["chain", "boot"])
    ap.add_argument("--tag", default="run")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--set", action="append", default=[], help="recipe override, e.g. k_samples=8")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    recipe = parse_sets(args.set, Recipe())
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"recipe_{args.tag}.json"
    if args.command == "boot":
        recipe = dataclasses.replace(recipe, schedule=[])
    chains = []
    for seed in args.seeds:
        chains.append(run_chain(recipe, seed))
        out.write_text(
            json.dumps({"tag": args.tag, "recipe": dataclasses.asdict(recipe), "chains": chains}, indent=1)
        )
    text = summarise(args.tag, recipe, chains)
    (RESULTS / f"recipe_{args.tag}.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
