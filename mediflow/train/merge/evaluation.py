"""The evaluation hook the merge preset's searches call: ``evaluate(model_dir) -> float``.

The contract is one callable, ``Callable[[Path], float]``: it receives a merged model folder (a
normal Hugging Face folder) and returns a score where **higher is better**. The preset config names
it in one of two ways:

* ``eval_config: eval.yaml`` -- a ``mediflow train eval`` config; its score is
  :func:`mediflow.train.eval.make_evaluator`'s (mean task score on held-out MediFlow records, or
  minus the mean log-perplexity on held-out documents per domain). ``model.name_or_path`` may be
  left out: the base model is filled in, and the folder being scored is passed explicitly.
* ``callable: package.module:function`` -- any importable function with that signature.

Python callers pass their own callable to :func:`mediflow.train.merge.run_mediphi_preset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError

Evaluator = Callable[[Path], float]


def build_evaluator(spec: Any, root: Path, base_model: Path) -> Evaluator:
    """The evaluator a preset's ``evaluate:`` section describes (paths relative to ``root``)."""
    if not isinstance(spec, Mapping) or len(spec) != 1 or not set(spec) <= {"eval_config", "callable"}:
        raise ConfigError("evaluate: the preset needs exactly one of {eval_config: PATH} or {callable: 'module:function'}")
    if "eval_config" in spec:
        from mediflow.train.config import load_config
        from mediflow.train.eval import make_evaluator

        path = root / str(spec["eval_config"])
        config = load_config(path, "eval", overrides=[f"model.name_or_path={base_model}"])
        return make_evaluator(config)
    return _import_callable(str(spec["callable"]))


def _import_callable(reference: str) -> Evaluator:
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"evaluate.callable: '{reference}' is not of the form 'package.module:function'")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"evaluate.callable: cannot import '{reference}' ({exc})") from None
    if not callable(function):
        raise ConfigError(f"evaluate.callable: '{reference}' is not callable")
    return function
