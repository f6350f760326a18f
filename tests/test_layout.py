"""Project-level consistency: one name per stage everywhere, the core never imports Prefect, heavy libraries
load lazily, infra files are well formed, the CI entry runs the README's test command."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers import ROOT, run_cli

STAGES = ["propose", "sample", "verify", "correct", "validate", "finetune", "evaluate"]


def test_every_dvc_stage_has_config_function_cli_and_task() -> None:
    import tasks
    from selfimprove import stages
    from selfimprove.cli import app
    from selfimprove.config import Config

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert set(dvc["stages"]) == {"bootstrap", *STAGES, "summary"}
    commands = {c.name for c in app.registered_commands}
    fields = {f.alias or n for n, f in Config.model_fields.items()}
    for name in dvc["stages"]:
        assert name in fields or name == "summary", f"params section {name!r} missing"  # summary has no knobs
        assert hasattr(stages, f"run_{name}"), name
        assert name in commands, name
        cmd = dvc["stages"][name].get("cmd") or dvc["stages"][name]["do"]["cmd"]
        assert cmd.startswith(f"selfimprove {name}"), cmd
        assert getattr(tasks, name).fn is getattr(stages, f"run_{name}")


def test_params_sections_used_by_dvc_exist() -> None:
    from selfimprove.params import load_config

    cfg = load_config(ROOT / "params.yaml").model_dump(by_alias=True)
    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        for p in (stage.get("do") or stage).get("params", []):
            top = p.split(".")[0]
            assert top in cfg, f"{name}: params key {p!r} not in params.yaml"


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('\\n'.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_never_imports_prefect_and_imports_heavy_libraries_lazily() -> None:
    mods = _modules_after(
        "import selfimprove, selfimprove.cli, selfimprove.config, selfimprove.stages, selfimprove.tracking,"
        " selfimprove.quality, selfimprove.filters, selfimprove.samplers, selfimprove.verifiers, selfimprove.trainers"
    )
    for heavy in ("prefect", "trl", "great_expectations", "vllm", "torch", "mlflow", "dvc", "peft", "math_verify"):
        assert heavy not in mods, f"importing the core imported {heavy}"
    src = ROOT / "src" / "selfimprove"
    offenders = [p for p in src.rglob("*.py") if "import prefect" in p.read_text() or "from prefect" in p.read_text()]
    assert not offenders, offenders


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci
    assert "make demo" in readme and "make test" in readme


def test_prefect_yaml_entrypoints_exist() -> None:
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    for d in spec["deployments"]:
        module, _, fn = d["entrypoint"].partition(":")
        # by module path, so a work pool's flow run and its Ray workers import the same module name
        assert not module.endswith(".py"), d["entrypoint"]
        path = ROOT / (module.replace(".", "/") + ".py")
        assert path.exists() and f"def {fn}(" in path.read_text(), d["entrypoint"]
        params_file = d["parameters"]["params"]
        assert (ROOT / params_file).exists(), params_file


def test_compose_file_is_valid() -> None:
    compose = ROOT / "infra" / "docker-compose.yml"
    env = ROOT / "infra" / "env.example"
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True).returncode == 0:
            out = subprocess.run([*cmd, "-f", str(compose), "--env-file", str(env), "config", "-q"], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            return
    # No compose binary on this machine: check the structure ourselves (services, dependencies, volumes, files).
    spec = yaml.safe_load(compose.read_text())
    services = spec["services"]
    assert {"postgres", "minio", "mlflow", "prefect-server", "worker", "ray-head", "ray-worker"} <= set(services)
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (compose.parent / src).exists(), src
            else:
                assert src in spec["volumes"], src
        build = svc.get("build")
        if build:
            assert (compose.parent / build["context"] / build["dockerfile"]).exists() or (compose.parent / build["dockerfile"]).exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["check", "-S", "sample.temprature=0.5"], "did you mean 'temperature'"),
        (["check", "-S", "sample.top_p=3"], "sample.top_p"),
        (["sample", "--round", "r9"], "round 'r9' is not in params.yaml"),
        (["check", "-S", "model.source=path", "-S", "model.ensemble=1", "-S", "model.path=/nonexistent/model"],
             "/nonexistent/model"),
            (["check", "-S", "model.source=path", "-S", "model.path=/nonexistent/model"], "set model.ensemble: 1"),
    ],
)
def test_cli_errors_name_the_problem(tmp_path: Path, args: list[str], fragment: str) -> None:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    proc = run_cli(args, tmp_path, check=False)
    assert proc.returncode == 1
    assert fragment in proc.stderr + proc.stdout, proc.stderr
    assert not (tmp_path / "runs" / "r9").exists()


def test_bench_uses_the_public_api_and_its_own_helpers() -> None:
    """Benchmarks drive the product's code: they import ``bench/common.py`` and public names only, never tests/."""
    import ast

    root = Path(__file__).resolve().parents[1]
    bad = []
    for f in sorted((root / "bench").glob("*.py")):
        text = f.read_text()
        if "tests" in "".join(line for line in text.splitlines() if "sys.path" in line):
            bad.append(f"{f.name}: puts tests/ on sys.path")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module.split(".")[0] in ("tests", "helpers", "make_case_table", "conftest"):
                    bad.append(f"{f.name}: imports {node.module}")
                if node.module.startswith("selfimprove"):
                    bad += [f"{f.name}: {node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []
