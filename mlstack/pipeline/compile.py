"""Compile the pipelines to their checked-in IR, and tell whether the checked-in IR is stale."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from mlstack.errors import StackError
from mlstack.settings import (
    GATE_AT_LEAST,
    GATE_AT_MOST,
    GATE_FLOORS,
    check_gate_floors,
    code_root,
)

_TYPES = {"NUMBER_DOUBLE": float, "NUMBER_INTEGER": int, "STRING": str, "BOOLEAN": bool}


def pipelines() -> dict[str, object]:
    """IR file name -> pipeline function, for every pipeline of the project."""
    from pipelines.materialize import materialize_pipeline
    from pipelines.training import training_pipeline
    from pipelines.tuning import tuning_pipeline

    return {
        "training.yaml": training_pipeline,
        "tuning.yaml": tuning_pipeline,
        "materialize.yaml": materialize_pipeline,
    }


def read_ir(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline spec of a compiled IR file and its platform spec (the Kubernetes settings of
    its tasks: Secrets as env), which KFP writes as a second YAML document ({} when none)."""
    import yaml

    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs[0], (docs[1] if len(docs) > 1 else {})


def compile_pipeline(name: str, out: Path) -> None:
    """Compile the pipeline ``name`` (an IR file name of ``pipelines()``) to ``out``, replaced
    whole (never half-written); ``KeyError`` for an unknown name, KFP's errors pass through."""
    from kfp import compiler

    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    compiler.Compiler().compile(pipelines()[name], str(tmp))
    tmp.replace(out)


def compile_all(directory: Path | None = None) -> list[Path]:
    """Compile every pipeline into ``directory`` (default: ``pipelines/``); returns the files."""
    directory = directory or code_root() / "pipelines"
    written = []
    for name in pipelines():
        compile_pipeline(name, directory / name)
        written.append(directory / name)
    return written


def stale(directory: Path | None = None) -> list[str]:
    """The checked-in IR files that differ from a fresh compile (or are missing)."""
    directory = directory or code_root() / "pipelines"
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in pipelines():
            fresh = Path(tmp) / name
            compile_pipeline(name, fresh)
            checked_in = directory / name
            if not checked_in.exists() or fresh.read_bytes() != checked_in.read_bytes():
                out.append(name)
    return out


def parse_params(pairs: list[str], ir_path: Path) -> dict[str, Any]:
    """``key=value`` pairs typed by the pipeline's own input definitions in ``ir_path``.

    Raises ``StackError`` naming the pair that is malformed, unknown or of the wrong type, or a
    gate threshold looser than its floor (``mlstack.settings.check_gate_floors``)."""
    spec, _ = read_ir(ir_path)
    defs = spec["root"]["inputDefinitions"]["parameters"]
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            raise StackError(f"--param {pair!r}: expected key=value")
        if key not in defs:
            raise StackError(f"--param {key}: not a pipeline parameter (known: {', '.join(defs)})")
        kind = _TYPES[defs[key]["parameterType"]]
        try:
            out[key] = raw.lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        except ValueError:
            raise StackError(f"--param {key}: {raw!r} is not a {kind.__name__}") from None
    # refused here, before any step runs (the evaluate step refuses them too)
    gates = {k: v for k, v in out.items() if k in GATE_AT_LEAST + GATE_AT_MOST}
    if gates:
        check_gate_floors(replace(GATE_FLOORS, **gates))
    return out
