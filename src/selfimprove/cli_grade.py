"""``selfimprove grade``: grade a JSONL file of completions with the registered verifiers.

What: a thin Typer command over ``selfimprove.grading.grade_file``: it parses options, calls the pure
function, and prints the summary (a rich table, or JSON with ``--json``). Bad input exits with code 1 and
an error naming the file and line; nothing is written in that case.

Run it standalone (``python -m selfimprove.cli_grade FILE``) or mounted on the main app as
``selfimprove grade`` (``app.command("grade")(grade)``)::

    selfimprove grade outputs.jsonl --verifier gsm8k
    selfimprove grade runs/r1/samples.jsonl --json -S math_equiv.timeout_s=10
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

grade_app = typer.Typer(add_completion=False, help="Grade completions with the registered verifiers.")


def _parse_sets(sets: list[str]) -> dict[str, dict[str, Any]]:
    """``["math_equiv.timeout_s=10", "gsm8k.policy.percent=either"]`` ->
    ``{"math_equiv": {"timeout_s": 10}, "gsm8k": {"policy": {"percent": "either"}}}`` (values read as YAML)."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in sets:
        key, eq, raw = item.partition("=")
        name, dot, option = key.partition(".")
        if not (eq and dot and name and option):
            raise typer.BadParameter(
                f"{item!r}: expected VERIFIER.OPTION=VALUE, e.g. math_equiv.timeout_s=10"
            )
        node = out.setdefault(name, {})
        *parents, leaf = option.split(".")  # math_equiv.policy.percent=fraction sets a nested option
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise typer.BadParameter(f"{item!r}: {part!r} was set to a value, not a mapping")
        node[leaf] = yaml.safe_load(raw)
    return out


@grade_app.command()
def grade(
    input: Annotated[Path, typer.Argument(help="JSONL of grade records, or a samples.jsonl from the loop.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Verdicts JSONL (default: <input stem>.verdicts.jsonl)."),
    ] = None,
    verifier: Annotated[
        str | None,
        typer.Option(
            "--verifier", "-v", help="Verifier for records that name none (samples: overrides the problems')."
        ),
    ] = None,
    problems: Annotated[
        Path | None,
        typer.Option("--problems", help="problems.jsonl for a samples file (default: beside it)."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-S", help="Verifier option VERIFIER.OPTION=VALUE (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
) -> None:
    """Grade every completion in INPUT; write verdicts and a summary; print the summary."""
    from rich.console import Console
    from rich.markup import escape

    from selfimprove.grading import grade_file
    from selfimprove.io import DataError
    from selfimprove.registry import UnknownNameError

    options = _parse_sets(set_ or [])
    try:
        report = grade_file(input, out, verifier=verifier, problems_path=problems, verifier_options=options)
    except (DataError, UnknownNameError, ValueError) as e:  # ValueError: invalid verifier options (pydantic)
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_table(report)


def _print_table(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    statuses = sorted({s for v in report.by_verifier.values() for s in v.status})
    table = Table(title=f"{report.n} completion(s) from {report.input}")
    table.add_column("verifier")
    table.add_column("n", justify="right")
    table.add_column("passed", justify="right")
    table.add_column("accuracy", justify="right")
    for s in statuses:
        table.add_column(s, justify="right")
    if report.expected:
        table.add_column("agree / expected", justify="right")
    for name, v in sorted(report.by_verifier.items()):
        agree = [f"{v.agree}/{v.expected}"] if report.expected else []
        table.add_row(
            name, str(v.n), str(v.passed), f"{v.accuracy:.3f}", *(str(v.status.get(s, 0)) for s in statuses),
            *agree,
        )
    console = Console()
    console.print(table)
    if report.expected:
        console.print(f"agreement with 'expect': {report.agree}/{report.expected}", highlight=False)
        for d in report.disagreements[:20]:
            console.print(
                f"  {d['where']} id={d['id']}: expected {d['expect']}, got {d['status']}: {d['reason']}",
                highlight=False, markup=False,
            )
        if len(report.disagreements) > 20:
            console.print(f"  ... {len(report.disagreements) - 20} more in {report.summary_path}", highlight=False)
    console.print(f"verdicts: {report.out}\nsummary:  {report.summary_path}", highlight=False)


if __name__ == "__main__":
    grade_app()
