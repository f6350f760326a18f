"""The params file: ``params.yaml`` read with line-numbered errors, ``dvc exp run -S`` overrides, and edits.

Why: a self-improvement loop runs for hours; a misspelt key or an out-of-range value must fail before any
work, naming the key, its line in ``params.yaml`` and the near matches. The same file is what DVC reads
for its ``params:`` dependencies, so there is exactly one source of truth.

How:
- ``load_config(path, overrides)`` parses YAML (syntax errors name line and column), applies dotted
  overrides in the ``dvc exp run -S`` form (``sample.temperature=0.7``), validates against the schema
  (``selfimprove.config``), and raises ``ConfigError`` with one line per problem.
- ``apply_overrides_to_file(path, overrides)`` writes overrides into a params file (comments kept), as
  ``dvc exp run -S`` does. Runs call it on *their own* copy (``selfimprove.experiments``), never on the user's
  workspace ``params.yaml``. ``add_round``, ``keep_rounds``, ``clear_rounds``, ``set_rounds`` edit the rounds
  the policy layer decides.
- ``eval_rounds`` is derived: round 0 plus every round, written in params.yaml as a YAML merge of ``rounds``
  (``eval_rounds: {r0: {}, <<: *rounds}``) so that DVC's ``evaluate`` stage can ``foreach`` over it. The writers
  here keep it in step; the loader checks it.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from selfimprove.config import Config, ConfigError
from selfimprove.registry import did_you_mean  # noqa: F401


# ------------------------------------------------------------------------------------------- YAML loading


def _yaml():
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 120
    return y


def _read_yaml(path: Path) -> Any:
    from ruamel.yaml.error import MarkedYAMLError

    if not path.exists():
        raise ConfigError(f"{path}: params file not found (run from the project folder or pass --params)")
    text = path.read_text(encoding="utf-8")
    try:
        data = _yaml().load(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    return {} if data is None else data


def _line_of(data: Any, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the deepest key of ``loc`` that exists in the ruamel document."""
    line = None
    node = data
    for part in loc:
        try:
            if hasattr(node, "lc") and isinstance(part, str) and part in node:
                line = node.lc.key(part)[0] + 1
                node = node[part]
            elif hasattr(node, "lc") and isinstance(part, int) and isinstance(node, list) and part < len(node):
                line = node.lc.item(part)[0] + 1
                node = node[part]
            else:
                break
        except Exception:  # noqa: BLE001 - best effort: a line number is a hint only
            break
    return line


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (for did-you-mean on unknown keys)."""
    model: Any = Config
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            model = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
            if model is None and args and ann is not None and getattr(ann, "__origin__", None) is dict:
                model = args[1] if isinstance(args[1], type) else None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_errors(e: ValidationError, data: Any, source: str) -> str:
    lines = []
    for err in e.errors():
        loc = tuple(p for p in err["loc"] if p not in ("function-after",) and not str(p).startswith("function-"))
        dotted = ".".join(str(p) for p in loc) or "<root>"
        line = _line_of(data, loc)
        where = f"{source}:{line}" if line else source
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc)
            known = sorted({f.alias or n for n, f in owner.model_fields.items()}) if owner else []
            hint = did_you_mean(str(loc[-1]), known)
            allowed = f" Allowed keys here: {', '.join(known)}" if known and not hint else ""
            lines.append(f"{where}: unknown key '{dotted}'{hint}{allowed}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = err.get("input")
            got_s = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
            lines.append(f"{where}: {dotted}: {msg}{got_s}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


# ----------------------------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """Parse ``a.b.c=value``; the value is read as a YAML scalar, like ``dvc exp run -S``.

    >>> parse_override("sample.temperature=0.7")
    (['sample', 'temperature'], 0.7)
    >>> parse_override("validate.filters.1.min=0.8")
    (['validate', 'filters', 1, 'min'], 0.8)
    """
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE in dotted form, e.g. sample.temperature=0.7")
    key, _, raw = text.partition("=")
    key = key.strip()
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key segment")
    import yaml

    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    return path, value


def _set_path(data: Any, path: list[str | int], value: Any, text: str) -> None:
    node = data
    for i, part in enumerate(path[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ConfigError(f"override {text!r}: {'.'.join(map(str, path[: i + 1]))} is not a list index that exists")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(map(str, path[:i]))} is not a mapping")
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ConfigError(f"override {text!r}: list index {last} does not exist")
        node[last] = value
    else:
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: parent is not a mapping")
        node[last] = value


def apply_overrides(data: Any, overrides: list[str] | None) -> Any:
    data = copy.deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        _set_path(data, path, value, text)
    return data


def load_config(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Config:
    """Load, override and validate ``params.yaml``; raise ``ConfigError`` naming every problem."""
    path = Path(path)
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (sample:, verify:, ...)")
    merged = apply_overrides(data, overrides)
    if any(parse_override(o)[0][0] == "rounds" for o in overrides or []) and isinstance(merged.get("rounds"), dict):
        merged["eval_rounds"] = {"r0": {}, **merged["rounds"]}  # the YAML merge follows rounds
    try:
        return Config.model_validate(_plain(merged))
    except ValidationError as e:
        source = str(path) + (" (with overrides)" if overrides else "")
        raise ConfigError(_format_errors(e, merged, source)) from None


def config_from_text(text: str, source: str = "<params text>") -> Config:
    """A params file's text (e.g. ``git show REV:params.yaml`` of a saved experiment) as a ``Config``; errors name
    ``source`` and the line."""
    data = _yaml().load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of sections (sample:, verify:, ...)")
    try:
        return Config.model_validate(_plain(data))
    except ValidationError as e:
        raise ConfigError(_format_errors(e, data, source)) from None


def _plain(data: Any) -> Any:
    """ruamel containers -> plain dict/list (pydantic and deepcopy-friendly)."""
    if isinstance(data, dict):
        return {str(k): _plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain(v) for v in data]
    return data


EVAL_PLACEHOLDER = "__selfimprove_eval_rounds__"
EVAL_BLOCK = "eval_rounds:   # round 0 and every round above, for DVC's evaluate stage (a YAML merge: never edit)\n  r0: {}\n  <<: *rounds"


def _load_for_edit(path: Path) -> Any:
    """The params document, ready for edits: ``eval_rounds`` detached from ``rounds`` (see ``_dump_params``)."""
    data = _read_yaml(path)
    if isinstance(data, dict) and "eval_rounds" in data:
        keys = list(data)
        data.pop("eval_rounds")
        if hasattr(data, "ca"):
            data.ca.items.pop("eval_rounds", None)
        rounds = data.get("rounds")
        if rounds is not None and hasattr(rounds, "_ref"):
            rounds._ref = []  # ruamel's merge bookkeeping breaks on edits of a merged map; we rebuild the merge
        data.insert(keys.index("eval_rounds"), "eval_rounds", EVAL_PLACEHOLDER)
    return data


def _dump_params(data: Any) -> str:
    """YAML text of a params document with ``eval_rounds`` written as the merge of ``rounds``.

    ruamel keeps comments but cannot edit merged maps reliably, so the merge is written as text."""
    from ruamel.yaml.comments import CommentedMap

    rounds = data.get("rounds")
    if isinstance(rounds, dict) and not isinstance(rounds, CommentedMap):
        cm = CommentedMap()
        for k, v in rounds.items():
            entry = CommentedMap(v or {})
            entry.fa.set_flow_style()
            cm[k] = entry
        data["rounds"] = rounds = cm
    if isinstance(rounds, CommentedMap):
        rounds.yaml_set_anchor("rounds", always_dump=True)
    if "eval_rounds" not in data:
        data["eval_rounds"] = EVAL_PLACEHOLDER
    buf = io.StringIO()
    _yaml().dump(data, buf)
    text = buf.getvalue()
    return re.sub(rf"^eval_rounds: {EVAL_PLACEHOLDER}.*$", EVAL_BLOCK.replace("\\", "\\\\"), text, flags=re.M)


def apply_overrides_to_file(path: str | Path, overrides: list[str]) -> Config:
    """Validate overrides, then write them into ``params.yaml`` keeping comments (like ``dvc exp run -S``)."""
    path = Path(path)
    for text in overrides:
        if parse_override(text)[0][0] == "eval_rounds":
            raise ConfigError(f"override {text!r}: eval_rounds is derived from rounds; override rounds instead")
    config = load_config(path, overrides)  # validate first: never write an invalid file
    if not overrides:
        return config
    data = _load_for_edit(path)
    for text in overrides:
        p, value = parse_override(text)
        _set_path(data, p, value, text)
    from selfimprove.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(_dump_params(data), encoding="utf-8")
    return load_config(path)


def declared_params(dvc_yaml: str | Path) -> list[str]:
    """The params keys the stages of ``dvc.yaml`` declare (templated ones like ``rounds.${key}`` left out)."""
    import yaml

    spec = yaml.safe_load(Path(dvc_yaml).read_text()) or {}
    keys: list[str] = []
    for stage in (spec.get("stages") or {}).values():
        for p in (stage.get("do") or stage).get("params", []) or []:
            if isinstance(p, str) and "${" not in p and p not in keys:
                keys.append(p)
    return keys


def fill_declared(path: str | Path, keys: list[str]) -> list[str]:
    """Write the default of every key in ``keys`` that the params file leaves out; return the keys added.

    DVC records a stage's declared params from the file, and refuses a declared key the file lacks: a run's
    params.yaml is completed so that the experiment records every value that ran, defaults included."""
    path = Path(path)
    config = load_config(path)
    values = config.model_dump(mode="json", by_alias=True)
    data = _load_for_edit(path)
    added = []
    for key in keys:
        parts = key.split(".")
        node, default = data, values
        for part in parts[:-1]:
            default = default.get(part, {}) if isinstance(default, dict) else {}
            if part not in node or node[part] is None:
                from ruamel.yaml.comments import CommentedMap

                node[part] = CommentedMap()
            node = node[part]
        default = default.get(parts[-1]) if isinstance(default, dict) else None
        if parts[-1] not in node:
            node[parts[-1]] = default
            added.append(key)
    if added:
        from selfimprove.io import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(_dump_params(data), encoding="utf-8")
    return added


def keep_rounds(path: str | Path, keep: Sequence[str], note: str | None) -> Config:
    """Remove every round not in ``keep`` from ``params.yaml`` (a run that stopped early) and say why in a
    comment on the last kept round (``note``; None = no comment), so the params record exactly the rounds that
    ran and the reason."""
    path = Path(path)
    data = _load_for_edit(path)
    rounds = data.get("rounds")
    if not rounds or not keep:
        raise ConfigError(f"{path}: no rounds to keep")
    for key in list(rounds):
        if key not in keep:
            del rounds[key]
    if note:
        rounds.yaml_add_eol_comment(f"stopped after this round: {note}", list(rounds)[-1])
    return _write_params(path, data)


def add_round(path: str | Path, key: str, entry: dict[str, Any]) -> Config:
    """Append round ``key`` to the ``rounds`` of a params file (a curriculum run's own), keeping comments."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    path = Path(path)
    data = _load_for_edit(path)
    rounds = data.get("rounds")
    if rounds is None or not isinstance(rounds, dict):
        rounds = data["rounds"] = CommentedMap()
    if key in rounds:
        raise ConfigError(f"{path}: round {key} is already in rounds")
    item = CommentedMap()
    for k, v in entry.items():
        if isinstance(v, list):
            v = CommentedSeq(v)
            v.fa.set_flow_style()
        item[k] = v
    item.fa.set_flow_style()
    rounds[key] = item
    return _write_params(path, data)


def clear_rounds(path: str | Path) -> Config:
    """Remove every round from a params file: a curriculum run starts from round 0 and decides the rest."""
    from ruamel.yaml.comments import CommentedMap

    path = Path(path)
    data = _load_for_edit(path)
    old = data.get("rounds")
    new = CommentedMap()
    if hasattr(old, "ca") and old is not None:
        new.ca.comment = old.ca.comment
    data["rounds"] = new
    return _write_params(path, data)


def _write_params(path: Path, data: Any) -> Config:
    """Write an edited params document (comments kept, ``eval_rounds`` as the merge of ``rounds``) after
    validating it: an edit that the loader would refuse never reaches the file."""
    from selfimprove.io import atomic_path

    text = _dump_params(data)
    config = Config.model_validate(_plain(_yaml().load(text)))
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return config


def set_rounds(path: str | Path, n: int, start_difficulty: int | None = None) -> Config:
    """Rewrite ``rounds`` in ``params.yaml`` to r1..rn, extending the curriculum by one difficulty per round."""
    path = Path(path)
    data = _load_for_edit(path)
    old = dict(data.get("rounds") or {})
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    new = CommentedMap()
    last_diff: list[int] | None = None
    for i in range(1, n + 1):
        key = f"r{i}"
        if key in old:
            entry = old[key]
            diffs = entry.get("difficulties")
            last_diff = list(diffs) if diffs else last_diff
        else:
            if last_diff:
                diffs = [max(last_diff) + 1]
            elif start_difficulty is not None:
                diffs = [start_difficulty + i - 1]
            else:
                diffs = None
            entry = CommentedMap(prev=f"r{i - 1}")
            if diffs:
                seq = CommentedSeq(diffs)
                seq.fa.set_flow_style()
                entry["difficulties"] = seq
            entry.fa.set_flow_style()
            last_diff = diffs
        new[key] = entry
    data["rounds"] = new
    return _write_params(path, data)
