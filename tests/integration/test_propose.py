"""The ``propose`` stage end to end: the model writes problems, they are checked, versioned, sampled and gated.

Through ``selfimprove run`` on the registered fakes (the ``scripted`` sampler writes the problem set's valid
proposal or a wrong one, by the model's skill; ``noop`` fine-tuning), with real Prefect, DVC, MLflow and GX."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FAKE_OVERRIDES, make_project, run_cli

PROPOSE = ["propose.enabled=true", "propose.per_round=24", "propose.mix=0.5", "sample.k=3",
           "rounds={r1: {prev: r0, difficulties: [3]}, r2: {prev: r1, difficulties: [3]}}"]


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def proj(tmp_path_factory: pytest.TempPathFactory, prefect_backend) -> Path:
    return make_project(tmp_path_factory.mktemp("propose") / "proj", FAKE_OVERRIDES + PROPOSE)


def test_proposals_are_checked_versioned_mixed_in_banded_and_tracked(proj: Path) -> None:
    run_cli(["run", "--name", "prop", "--apply", "always"], proj, timeout=900)
    lock = (proj / "dvc.lock").read_text()
    assert "propose@r1" in lock and "propose@r2" in lock and "runs/r1/propose" in lock
    dag = subprocess.run([sys.executable, "-m", "dvc", "dag", "--md"], cwd=proj, capture_output=True, text=True,
                         check=True).stdout
    names = dict(re.findall(r'(node\d+)\["([^"]+)"\]', dag))
    edges = {(names[a], names[b]) for a, b in re.findall(r"(node\d+)-->(node\d+)", dag)}
    assert ("propose@r1", "sample@r1") in edges and ("propose@r1", "validate@r1") in edges, dag[:2000]

    props = jsonl(proj / "runs/r1/propose/proposals.jsonl")
    assert len(props) == 24
    accepted = [p for p in props if p["accepted"]]
    rejected = [p for p in props if not p["accepted"]]
    assert accepted and all(p["label_source"] == "execution" and p["label"] for p in accepted)
    assert all(p["rejected_reason"] for p in rejected) and all(p["rejected_reason"] is None for p in accepted)
    for p in accepted:  # the label is computed from the operands the model wrote, never read from the model
        meta = p["problem"]["meta"]
        assert meta["sum"] == meta["a"] + meta["b"] and p["parents"] and p["novelty"] > 0.3

    # half the round from the accepted proposals, half from the problem set (propose.mix 0.5 of 16)
    sampled = jsonl(proj / "runs/r1/sample/problems.jsonl")
    mine = [q for q in sampled if q["meta"].get("proposal")]
    assert len(mine) == min(8, len(accepted)) and len(sampled) - len(mine) == 8

    # validate keeps the pool: every sampled proposal with its pass rate in the round's samples and its band
    pool1, pool2 = jsonl(proj / "runs/r1/validate/proposals.jsonl"), jsonl(proj / "runs/r2/validate/proposals.jsonl")
    assert len(pool1) == len(mine) and pool2[:len(pool1)] == pool1 and len(pool2) > len(pool1)
    assert {p["band"] for p in pool1} <= {"in", "too_easy", "too_hard"}
    verdicts = {v["sample_id"]: v for v in jsonl(proj / "runs/r1/verify/verdicts.jsonl")}
    ids = {q["id"] for q in mine}
    assert all(v["verifier"] == "exact_match" for v in verdicts.values() if v["problem_id"] in ids)
    train = jsonl(proj / "runs/r1/validate/train.jsonl")
    banned = {p["problem"]["id"] for p in pool1 if p["band"] != "in"}
    assert not [r for r in train if r["problem_id"] in banned], "out-of-band proposals are never trained on"

    m2 = json.loads((proj / "runs/metrics/r2.json").read_text())
    assert 0 <= m2["proposals/solved_next_round"] <= 1, "round 1's proposals, answered by the model round 1 made"
    assert "proposals/solved_next_round" not in json.loads((proj / "runs/metrics/r1.json").read_text())
    metrics = json.loads((proj / "runs/metrics/r1.json").read_text())
    assert metrics["propose/proposed"] == 24 and metrics["propose/accepted"] == len(accepted)
    assert metrics["proposals/sampled"] == len(pool1) and 0 <= metrics["proposals/band_yield"] <= 1
    assert sum(v for k, v in metrics.items() if k.startswith("propose/rejected/")) == len(rejected)
    report = json.loads(run_cli(["report", "--name", "prop", "--json"], proj).stdout)
    r1 = next(r for r in report["rounds"] if r["round"] == 1)
    assert r1["metrics"]["propose/accepted"] == len(accepted), "MLflow holds the round's proposal metrics"
    import asyncio

    from prefect.client.orchestration import get_client

    async def tables() -> dict[str, object]:
        async with get_client() as c:
            return {a.key: a.data for a in await c.read_artifacts() if a.key and a.key.startswith("prop-")}

    arts = asyncio.run(tables())
    assert "prop-round-1-proposals" in arts and "prop-summary" in arts, sorted(arts)
    assert "band yield" in str(arts["prop-round-1-proposals"]) and "proposed" in str(arts["prop-summary"])
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=proj, capture_output=True, text=True,
                            check=True).stdout
    assert "changed" not in status, status


def test_a_round_whose_proposals_are_all_rejected_stops_with_the_reasons_counted(proj: Path) -> None:
    out = run_cli(["run", "--name", "dups", "--rounds", "1", "-S", "propose.novelty.threshold=0.0"], proj, check=False,
                  timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert "propose@r1: the model's proposals failed validation (0 of 24 accepted" in text, text[-3000:]
    assert re.search(r"rejected: .*near_\w+ \d+", text), text[-3000:]
    assert "propose.per_round" in text and "Full report:" in text, text[-3000:]


def test_a_band_emptied_from_below_says_to_propose_harder_problems(proj: Path) -> None:
    out = run_cli(["run", "--name", "easy", "--rounds", "1", "-S", "propose.mix=1.0", "-S", "propose.band=[0.0, 0.01]"],
                  proj, check=False, timeout=900)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert "validate@r1: dataset failed validation" in text and "above propose.band" in text, text[-3000:]
    assert "more of them will not fill it" in text and "sample harder problems" in text, text[-3000:]


def test_a_missing_proposer_model_is_named_before_any_work(proj: Path) -> None:
    params = (proj / "params.yaml").read_bytes()
    out = run_cli(["run", "--name", "nomodel", "--rounds", "1", "-S", "propose.model=/nonexistent/proposer"], proj,
                  check=False, timeout=900)
    text = " ".join((out.stdout + out.stderr).split())
    assert out.returncode == 1 and "Traceback" not in text, text[-3000:]
    assert "propose.model: model not found: /nonexistent/proposer has no config.json" in text, text[-3000:]
    assert (proj / "params.yaml").read_bytes() == params
