"""Compile the pipelines to their checked-in IR, and tell whether the checked-in IR is stale."""

from __future__ import annotations

import tempfile
from pathlib import Path


def compile_training(out: Path) -> None:
    from kfp import compiler

    from pipelines.training import training_pipeline

    tmp = out.with_name(f".{out.stem}.tmp.yaml")
    compiler.Compiler().compile(training_pipeline, str(tmp))
    tmp.replace(out)


def is_stale(ir_path: Path) -> bool:
    """True when compiling now gives other bytes than the checked-in ``ir_path``."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / ir_path.name
        compile_training(fresh)
        return not ir_path.exists() or fresh.read_bytes() != ir_path.read_bytes()
