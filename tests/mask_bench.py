"""benchmarks/bench_masks.py, loaded from its file for the tests that share its
controlled-logits harness (test_masks_fast, test_masks_upscale)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_bench() -> ModuleType:
    """benchmarks/bench_masks.py holds the controlled-logits harness shared with the benchmark."""
    path = Path(__file__).parents[1] / "benchmarks" / "bench_masks.py"
    spec = importlib.util.spec_from_file_location("bench_masks_for_tests", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()
