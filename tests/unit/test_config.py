"""Config errors name the file, line, key and what is allowed; overrides use the dvc exp run -S form."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from selfimprove.config import ConfigError
from selfimprove.params import apply_overrides_to_file, load_config, parse_override, set_rounds

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def params(tmp_path: Path) -> Path:
    p = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", p)
    return p


def test_default_params_are_valid(params: Path) -> None:
    cfg = load_config(params)
    assert cfg.problems.name == "arithmetic"
    assert list(cfg.rounds) == ["r1", "r2", "r3"]
    assert cfg.verify.verifier == "majority_vote"  # the default loop is label-free


@pytest.mark.parametrize(
    "edit, expected",
    [
        # (text replaced in params.yaml, fragments the error must contain)
        (("  temperature: 1.0", "  temprature: 1.0"), ["unknown key 'sample.temprature'", "did you mean 'temperature'", "params.yaml:"]),
        (("seed: 3", "sede: 3"), ["unknown key 'sede'", "did you mean 'seed'"]),
        (("  top_p: 1.0", "  top_p: 1.5"), ["sample.top_p", "less than or equal to 1", "1.5"]),
        (("  k: 0                    # sampled", "  k: -1                    # sampled"), ["sample.k", "greater than or equal to 0"]),
        (("  sampler: transformers", "  sampler: transfomers"), ["unknown sampler 'transfomers'", "did you mean 'transformers'"]),
        (("  verifier: majority_vote", "  verifier: majority"), ["unknown verifier 'majority'", "majority_vote"]),
        (("{function: agreement, min: 1.0}", "{function: agreement, minimum: 1.0}"), ["filter 'agreement' does not take minimum", "it takes: min"]),
        (("{function: dedup}", "{function: dedupe}"), ["unknown filter 'dedupe'", "did you mean 'dedup'"]),
        (("r2: {prev: r1,", "r2: {prev: r3,"), ["rounds.r2.prev must be an earlier round (r0, r1)"]),
        (("  source: tiny ", "  source: path "), ["model.path is required"]),
    ],
)
def test_bad_params_name_the_field(params: Path, edit: tuple[str, str], expected: list[str]) -> None:
    text = params.read_text()
    assert edit[0] in text, edit[0]
    params.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(ConfigError) as e:
        load_config(params)
    for frag in expected:
        assert frag in str(e.value), str(e.value)


def test_unknown_key_reports_its_line(params: Path) -> None:
    lines = params.read_text().splitlines()
    n = next(i for i, l in enumerate(lines) if l.startswith("  temperature:"))
    lines[n] = "  temprature: 1.0"
    params.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=rf"params.yaml:{n + 1}: unknown key 'sample.temprature'"):
        load_config(params)


def test_yaml_syntax_error_names_line_and_column(params: Path) -> None:
    params.write_text("seed: 0\nsample:\n  k: [1, 2\n  temperature: 1.0\n")
    with pytest.raises(ConfigError, match=r"params.yaml:\d+:\d+: YAML syntax error"):
        load_config(params)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, path, value",
    [
        ("sample.temperature=0.7", ["sample", "temperature"], 0.7),
        ("sample.k=8", ["sample", "k"], 8),
        ("verify.verifier=exact_match", ["verify", "verifier"], "exact_match"),
        ("evaluate.difficulties=[1, 2]", ["evaluate", "difficulties"], [1, 2]),
        ("validate.filters.1.min=0.8", ["validate", "filters", 1, "min"], 0.8),
        ("model.path=", ["model", "path"], ""),
    ],
)
def test_parse_override(text: str, path: list, value: object) -> None:
    assert parse_override(text) == (path, value)


@pytest.mark.parametrize("bad", ["sample.temperature", "=3", "a..b=1"])
def test_bad_override_syntax(bad: str) -> None:
    with pytest.raises(ConfigError):
        parse_override(bad)


def test_overrides_validate_like_the_file(params: Path) -> None:
    cfg = load_config(params, ["sample.temperature=0.7", "validate.filters.1.min=0.8"])
    assert cfg.sample.temperature == 0.7
    assert cfg.validate_cfg.filters[1].kwargs == {"min": 0.8}
    with pytest.raises(ConfigError, match=r"unknown key 'sample.temprature'.*did you mean 'temperature'.*\(with overrides\)|with overrides"):
        load_config(params, ["sample.temprature=0.7"])


def test_overrides_written_to_file_keep_comments_and_reject_bad_values(params: Path) -> None:
    before = params.read_text()
    with pytest.raises(ConfigError):
        apply_overrides_to_file(params, ["sample.top_p=7"])
    assert params.read_text() == before, "an invalid override must not touch params.yaml"
    apply_overrides_to_file(params, ["sample.temperature=0.7"])
    after = params.read_text()
    assert "temperature: 0.7" in after
    assert "# label-free: the plurality answer is the pseudo-label" in after
    assert load_config(params).sample.temperature == 0.7


def test_set_rounds_extends_the_curriculum(params: Path) -> None:
    cfg = set_rounds(params, 4)
    assert list(cfg.rounds) == ["r1", "r2", "r3", "r4"]
    assert [cfg.rounds[k].difficulties for k in cfg.rounds] == [[4], [4, 5], [4, 5], [6]]  # new rounds add one digit each
    assert [cfg.rounds[k].prev for k in cfg.rounds] == ["r0", "r1", "r2", "r3"]
    cfg = set_rounds(params, 1)
    assert list(cfg.rounds) == ["r1"]
    assert "# label-free" in params.read_text()


def test_execution_section_names_a_wrong_stage_and_maps_resources_to_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="unknown stage.*validate.*resources are per stage"):
        load_config(ROOT / "params.yaml", ["execution.resources={validate: {num_cpus: 2}}"])
    cfg = load_config(ROOT / "params.yaml", ["execution.resources={finetune: {num_gpus: 1, memory_gb: 2}}"])
    assert cfg.execution.unit_resources("finetune").remote_options() == {"num_cpus": 1.0, "num_gpus": 1.0,
                                                                        "memory": 2 * 2**30}
    assert cfg.execution.unit_resources("sample").remote_options() == {"num_cpus": 1.0, "num_gpus": 0.0}
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert not cfg.execution.use_ray()  # auto on one core: the flow's own process
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert cfg.execution.use_ray()
    assert not load_config(ROOT / "params.yaml", ["execution.runner=sequential"]).execution.use_ray()


def test_a_local_ray_offers_a_cpu_per_model_when_there_are_fewer_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from flows.execution import local_cpus

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert local_cpus(load_config(ROOT / "params.yaml")) == 3  # the demo's three models all at once on 2 cores
    assert local_cpus(load_config(ROOT / "params.yaml", ["model.ensemble=1"])) == 2
    assert local_cpus(load_config(ROOT / "params.yaml", ["execution.num_cpus=5"])) == 5
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert local_cpus(load_config(ROOT / "params.yaml")) == 16


def test_code_defaults_are_the_committed_params_defaults() -> None:
    """One set of defaults: ``Config()`` (what a section left out of a params file gets) is the committed
    params.yaml, apart from the rounds it plans (a run's plan, not a default) and the evaluation's difficulties,
    which params.yaml spells out for the arithmetic set (the same as its default: None = every difficulty the
    set has; a set without difficulties, JSONL or MBPP, must keep None)."""
    from helpers import ROOT

    from selfimprove.config import Config
    from selfimprove.params import load_config
    from selfimprove.tracker import flatten

    plan = ("rounds", "eval_rounds", "evaluate.difficulties")
    code = {k: v for k, v in flatten(Config().model_dump(mode="json")).items() if not k.startswith(plan)}
    committed = {k: v for k, v in flatten(load_config(ROOT / "params.yaml").model_dump(mode="json")).items()
                 if not k.startswith(plan)}
    assert {k: (code.get(k), committed.get(k)) for k in code.keys() | committed.keys()
            if code.get(k) != committed.get(k)} == {}
