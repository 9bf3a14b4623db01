"""The evaluation hook the merge preset's searches call: ``evaluate(model_dir) -> float``.

The contract is one callable, ``Callable[[Path], float]``: it receives a merged model folder (a
normal Hugging Face folder) and returns a score where **higher is better**. The preset config names
it in one of two ways:

* ``eval_config: eval.yaml`` -- a ``mediflow train eval`` config; its score is
  :func:`mediflow.train.eval.make_evaluator`'s (mean task score on held-out MediFlow records, or
  minus the mean log-perplexity on held-out documents per domain). ``model.name_or_path`` may be
  left out: the base model is filled in, and the folder being scored is passed explicitly.
* ``callable: package.module:function`` -- any importable function with that signature.

Selection and report never share data: with an export root as the eval config's ``data.records``,
the preset selects on its ``validation`` split and reports on ``test``; otherwise ``report_config``
(or ``report_callable``) names the report set, and without one the report says there is none.

Python callers pass their own callables to :func:`mediflow.train.merge.run_mediphi_preset`. A
callable may carry a ``fingerprint`` attribute (a string naming its data and settings): cached
scores are reused only under the same fingerprint.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from mediflow.errors import ConfigError
from mediflow.train.config import load_config
from mediflow.train.data import splits_of
from mediflow.train.eval import make_evaluator
from mediflow.train.runtime import stage_paths

Evaluator = Callable[[Path], float]
_KEYS = {"eval_config", "report_config", "callable", "report_callable"}


@dataclass(frozen=True)
class PresetEvaluators:
    """The selection hook (SLERP ratios, search) and, on other data, the report hook (or ``None``)."""

    select: Evaluator
    report: Evaluator | None
    #: What the eval configs read (their data and taxonomy): the preset's output may not overlap them.
    data_paths: tuple[Path, ...] = ()


def build_evaluator(spec: Any, root: Path, base_model: Path) -> PresetEvaluators:
    """The evaluators a preset's ``evaluate:`` section describes (paths relative to ``root``).

    ``{eval_config: eval.yaml}`` whose ``data.records`` is an export root selects on its
    ``validation`` split and reports on ``test``; with another records file, ``report_config:``
    names a second eval config for the report. ``{callable: ..., report_callable: ...}`` likewise.
    """
    keys = set(spec) if isinstance(spec, Mapping) else set()
    if not keys or not keys <= _KEYS or len(keys & {"eval_config", "callable"}) != 1:
        raise ConfigError(
            "evaluate: the preset needs one of {eval_config: PATH} or {callable: 'module:function'} "
            "(optionally report_config / report_callable for the held-out report)"
        )
    if "callable" in spec:
        report = _import_callable(str(spec["report_callable"])) if spec.get("report_callable") else None
        return PresetEvaluators(_import_callable(str(spec["callable"])), report)

    def config(name: str) -> Any:
        return load_config(root / str(spec[name]), "eval", overrides=[f"model.name_or_path={base_model}"])

    selection = config("eval_config")
    records = selection.path(selection.data.records) if selection.data.records else None
    if records is not None and {"validation", "test"} <= splits_of(records):
        return PresetEvaluators(make_evaluator(selection, "validation"), make_evaluator(selection, "test"), tuple(stage_paths(selection)))
    report_config = config("report_config") if spec.get("report_config") else None
    report = make_evaluator(report_config) if report_config is not None else None
    data_paths = stage_paths(selection) + (stage_paths(report_config) if report_config is not None else [])
    return PresetEvaluators(make_evaluator(selection), report, tuple(data_paths))


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
    return cast(Evaluator, function)
