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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from mediflow.errors import ConfigError
from mediflow.train.config import EvaluateSection, StageConfig, load_config
from mediflow.train.data import splits_of
from mediflow.train.eval import make_evaluator
from mediflow.train.fingerprint import path_fingerprint
from mediflow.train.runtime import stage_paths

Evaluator = Callable[[Path], float]


@dataclass(frozen=True)
class PresetEvaluators:
    """The selection hook (SLERP ratios, search) and, on other data, the report hook (or ``None``)."""

    select: Evaluator
    report: Evaluator | None
    #: What the eval configs read (their data and taxonomy): the preset's output may not overlap them.
    data_paths: tuple[Path, ...] = ()


def build_evaluator(spec: EvaluateSection | None, root: Path, base_model: Path) -> PresetEvaluators:
    """The evaluators a preset's ``evaluate:`` section describes (paths relative to ``root``).

    ``eval_config`` whose ``data.records`` is an export root selects on its ``validation`` split and
    reports on ``test``; with another records file, ``report_config`` names a second eval config for
    the report, which may be neither the same file nor read the same data (:func:`check_separate`).
    ``callable`` / ``report_callable`` likewise.
    """
    if spec is None:
        raise ConfigError("evaluate: the preset needs one of eval_config: PATH or callable: 'module:function'")
    if spec.callable is not None:
        report = _import_callable(spec.report_callable) if spec.report_callable else None
        return PresetEvaluators(_import_callable(spec.callable), report)

    def config(name: str) -> StageConfig:
        return load_config(root / name, "eval", flags={"model.name_or_path": str(base_model)})

    selection = config(str(spec.eval_config))
    records = selection.path(selection.data.records) if selection.data.records else None
    if records is not None and {"validation", "test"} <= splits_of(records):
        return PresetEvaluators(make_evaluator(selection, "validation"), make_evaluator(selection, "test"), tuple(stage_paths(selection)))
    report_config = config(spec.report_config) if spec.report_config else None
    if report_config is not None:
        check_separate(root / str(spec.eval_config), selection, root / str(spec.report_config), report_config)
    report = make_evaluator(report_config) if report_config is not None else None
    data_paths = stage_paths(selection) + (stage_paths(report_config) if report_config is not None else [])
    return PresetEvaluators(make_evaluator(selection), report, tuple(data_paths))


def _eval_data(config: StageConfig) -> dict[Path, str]:
    """The held-out data an eval config scores on: each file or folder, with its content fingerprint."""
    paths = [config.path(path) for path in config.data.document_domains().values()]
    if config.data.records:
        paths.append(config.path(config.data.records))
    return {path: path_fingerprint(path) for path in paths if path.exists()}


def check_separate(selection_file: Path, selection: StageConfig, report_file: Path, report: StageConfig) -> None:
    """Refuse a report that shares the selection's data: the same config file, or the same records or
    documents (by path or by content). A held-out score on data the search selected on is not held out."""
    if selection_file.resolve() == report_file.resolve():
        raise ConfigError(f"evaluate: eval_config and report_config are the same file ({report_file}); the report must score data the selection never saw")
    chosen, reported = _eval_data(selection), _eval_data(report)
    for path, fingerprint in reported.items():
        shared = path if path in chosen else next((other for other, seen in chosen.items() if seen == fingerprint), None)
        if shared is not None:
            same = "reads" if shared == path else f"reads {path}, the same content as"
            raise ConfigError(f"evaluate: report_config {same} {shared}, which eval_config selects on; the report must score data the selection never saw")


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
