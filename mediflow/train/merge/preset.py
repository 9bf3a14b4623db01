"""The MediPhi merge recipe as a preset: SLERP each expert into the base, then BreadCrumbs-TIES.

MediPhi (arXiv 2505.10717) SLERP-merged every pre-instruction-tuned expert back into the base to
keep general abilities, with the ratio chosen on validation from {0.1, 0.25, 0.5}; it then merged
the SLERPed experts with mergekit's ``breadcrumbs_ties`` (``int8_mask``, ``normalize: false``),
tuning each expert's weight / density / gamma with an evolutionary search (500 evaluations). This
module runs that recipe from one YAML file, with every evaluation going through the same
``evaluate(model_dir) -> float`` hook (see :mod:`.evaluation`)::

    preset: mediphi
    base_model: base/               # paths relative to this file, or Hub ids in the local HF cache
    experts: [pubmed/, guidelines/] # or [{model: PATH}, ...]
    output: mediphi/                # a merge folder; its work/ holds the cache (below)
    dtype: bfloat16
    slerp: {t_choices: [0.1, 0.25, 0.5]}
    search: {budget: 500, seed: 0, population: 8,
             weight: [0.0, 1.0], density: [0.1, 1.0], gamma: [0.0, 2.0]}
    evaluate: {eval_config: eval.yaml}   # or {callable: 'package.module:function'}

Selection and report use different data: the SLERP ratio and the search are chosen on the eval
hook's ``validation`` split and the result is scored once on ``test`` (``preset_report.json``'s
``report``); see :mod:`.evaluation`. Every cached result is keyed by the content it depends on:
a chosen SLERP by the base's and the expert's weights, the ratios, the dtype and the evaluator's
fingerprint; a logged search score by all of those for every expert. Replacing an expert in place,
or pointing the evaluator at another eval set, recomputes instead of reusing.

``search.budget`` bounds the BreadCrumbs search; the SLERP choice costs ``len(t_choices)`` more
evaluations per expert. Intermediate merges are deleted as soon as they are scored (only the
chosen SLERP per expert is kept), so disk use stays near ``experts + 2`` models. The result folder
is a merge folder on the folder contract (:mod:`.output`: overlap guards, the lock, the typed
manifest; the model published only when complete). It holds the merged model,
``merge_config.yaml`` (the final mergekit-format config, usable with mergekit too),
``preset_report.json`` (every score) and ``work/``, the cache of chosen SLERPs and logged search
scores, which lives under the folder's lock and survives ``--overwrite`` like a teacher cache.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mediflow.configuration import read_config_file
from mediflow.errors import ConfigError
from mediflow.folders import OutputFolder
from mediflow.folders.atomic import write_json
from mediflow.folders.manifest import flatten
from mediflow.folders.model import staging_for
from mediflow.train.config import PUBLISHED, SEARCHED, EvaluateSection, PresetConfig
from mediflow.train.fingerprint import file_hash, value_hash
from mediflow.train.merge.config import parse_merge_config
from mediflow.train.merge.engine import plan_merge, write_merge
from mediflow.train.merge.evaluation import Evaluator
from mediflow.train.merge.output import MERGE_CONFIG_NAME, PRESET_REPORT_NAME, model_inputs, open_merge_output, publish_merge
from mediflow.train.merge.search import Candidate, Dimension, Trial, best_trial, evolutionary_search
from mediflow.train.models import HUB_ID, hub_snapshot

PRESETS = ("mediphi",)
#: The preset's cache inside its output folder: chosen SLERPs and the search log.
WORK_DIR = "work"


@dataclass(frozen=True)
class MediPhiPreset:
    """A validated preset config (paths resolved)."""

    base_model: Path
    experts: tuple[Path, ...]
    output: Path
    dtype: str | None
    t_choices: tuple[float, ...]
    budget: int
    seed: int
    population: int
    bounds: Mapping[str, tuple[float, float]]
    #: The ``evaluate:`` section (``None`` when not set); the CLI turns it into callables with
    #: ``build_evaluator`` (Python callers pass their own callable to :func:`run_mediphi_preset` instead).
    evaluate: EvaluateSection | None

    @property
    def work_dir(self) -> Path:
        """The cache of chosen SLERPs and scores, inside the output folder (under its lock)."""
        return self.output / WORK_DIR

    def plain(self) -> dict[str, Any]:
        """The settings as plain data for the manifest."""
        return {
            "preset": "mediphi",
            "base_model": str(self.base_model),
            "experts": [str(expert) for expert in self.experts],
            "dtype": self.dtype,
            "slerp": {"t_choices": list(self.t_choices)},
            "search": {"budget": self.budget, "seed": self.seed, "population": self.population, **{k: list(v) for k, v in self.bounds.items()}},
            "evaluate": self.evaluate.to_dict() if self.evaluate is not None else None,
        }


@dataclass(frozen=True)
class PresetResult:
    output: Path
    slerp_t: dict[str, float]
    best: Trial
    trials: list[Trial]
    #: The result's score on the report set (``None`` without one).
    report_score: float | None = None


def load_preset(path: Path, *, output: Path | None = None, flags: Mapping[str, Any] | None = None) -> MediPhiPreset:
    """Read a preset YAML (paths relative to its folder) with the flags' overrides; ``output`` overrides the file's."""
    path = Path(path)
    raw = read_config_file(path)
    try:
        return parse_preset(raw, root=path.resolve().parent, output=output, flags=flags)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def parse_preset(raw: Any, *, root: Path, output: Path | None = None, flags: Mapping[str, Any] | None = None) -> MediPhiPreset:
    """A :class:`MediPhiPreset` from a preset mapping (what the YAML holds): validated by :class:`PresetConfig`, paths resolved."""
    if isinstance(raw, Mapping) and "work_dir" in raw:
        raise ConfigError(f"work_dir: the preset keeps its cache in <output>/{WORK_DIR}, under the output folder's lock; remove this key")
    config = PresetConfig.load(raw, **dict(flags or {}))
    out = output if output is not None else (root / config.output if config.output else None)
    if out is None:
        raise ConfigError("output is required (or pass --output)")
    search = config.search
    return MediPhiPreset(
        base_model=_folder(root, config.base_model, "base_model"),
        experts=tuple(_folder(root, expert, f"experts.{index}") for index, expert in enumerate(config.expert_paths())),
        output=Path(out),
        dtype=config.dtype,
        t_choices=tuple(config.slerp.t_choices),
        budget=search.budget,
        seed=search.seed,
        population=search.population,
        bounds={name: (float(getattr(search, name)[0]), float(getattr(search, name)[1])) for name in SEARCHED},
        evaluate=config.evaluate,
    )


def _folder(root: Path, value: str, where: str) -> Path:
    """A model folder relative to the preset file, or a Hub id's snapshot in the local Hugging Face cache (never downloaded)."""
    path = (root / value).resolve()
    if not path.exists() and HUB_ID.match(value):
        return hub_snapshot(value, key=where, download=False)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where}: '{value}' is not a model folder with config.json")
    return path


def breadcrumbs_config(preset: MediPhiPreset, experts: list[Path], candidate: Candidate) -> dict[str, Any]:
    """The mergekit-format ``breadcrumbs_ties`` config for one candidate (``weight_0``, ``density_0``...)."""
    config: dict[str, Any] = {
        "merge_method": "breadcrumbs_ties",
        "base_model": str(preset.base_model),
        "parameters": {"int8_mask": True, "normalize": False},
        "models": [{"model": str(expert), "parameters": {name: candidate[f"{name}_{i}"] for name in SEARCHED}} for i, expert in enumerate(experts)],
    }
    if preset.dtype:
        config["dtype"] = preset.dtype
    return config


def evaluator_fingerprint(evaluate: Evaluator) -> str:
    """What an evaluator's scores depend on: its ``fingerprint`` attribute, else its code.

    ``mediflow train eval`` hooks carry a fingerprint of their settings and data. For any other
    callable, the module file and name stand in; give it a ``fingerprint`` attribute naming its
    data so that switching the data invalidates cached scores.
    """
    declared = getattr(evaluate, "fingerprint", None)
    if declared:
        return str(declared)

    source = inspect.getsourcefile(evaluate) if inspect.isfunction(evaluate) or inspect.ismethod(evaluate) else None
    code = file_hash(Path(source)) if source and Path(source).is_file() else None  # None: a frozen or built-in module
    return value_hash({"callable": getattr(evaluate, "__qualname__", repr(evaluate)), "source": code})


def run_mediphi_preset(preset: MediPhiPreset, evaluate: Evaluator, *, report: Evaluator | None = None, overwrite: bool = False, data_paths: Sequence[Path] = ()) -> PresetResult:
    """Run the recipe and write the best merge to ``preset.output``.

    ``evaluate`` selects (the SLERP ratios, the search); ``report``, on other data, scores the result
    once for ``preset_report.json``. Without ``report`` the report says there is no held-out score.
    ``data_paths`` are what the evaluators read (:class:`.evaluation.PresetEvaluators`): the output
    may not overlap them any more than the models.
    The output folder's identity is the preset's settings, the content of the base and every expert
    and the evaluators' fingerprints: rerunning the same preset replays every score from ``work/``;
    another one there is refused naming what changed, unless ``overwrite`` (``work/`` is kept: its
    entries are keyed by content, so only what still matches is reused).
    """
    judge = evaluator_fingerprint(evaluate)
    inputs = model_inputs([preset.base_model, *preset.experts])
    base = inputs[0].fingerprint
    identity = flatten(
        {
            **{key: value for key, value in preset.plain().items() if key not in ("base_model", "experts", "evaluate")},
            "base weights": base,
            "experts": {str(i): ref.fingerprint for i, ref in enumerate(inputs[1:])},
            "selection evaluator": judge,
            "report evaluator": evaluator_fingerprint(report) if report is not None else None,
        }
    )
    folder = open_merge_output(preset.output, config=preset.plain(), identity=identity, inputs=inputs, overwrite=overwrite, caches=(WORK_DIR,), data_paths=data_paths)
    with folder:
        result = _run_preset(preset, evaluate, report, judge, base, [ref.fingerprint for ref in inputs[1:]], folder)
        folder.finish({"evaluations": len(result.trials), "experts": len(preset.experts)}, {"best_score": result.best.score, "report_score": result.report_score})
    return result


def _run_preset(preset: MediPhiPreset, evaluate: Evaluator, report: Evaluator | None, judge: str, base: str, experts: list[str], folder: OutputFolder) -> PresetResult:
    preset.work_dir.mkdir(exist_ok=True)
    slerp_scores: dict[str, dict[str, float]] = {}
    slerped, slerp_t, slerp_keys = [], {}, []
    for index, (expert, weights) in enumerate(zip(preset.experts, experts, strict=True)):
        key = value_hash({"base": base, "expert": weights, "t": preset.t_choices, "dtype": preset.dtype, "evaluator": judge})
        chosen, t, scores = _choose_slerp(preset, index, expert, evaluate, key)
        slerped.append(chosen)
        slerp_t[str(expert)] = t
        slerp_scores[str(expert)] = scores
        slerp_keys.append(key)

    candidate_dir = preset.work_dir / "candidate"

    def objective(candidate: Candidate) -> float:
        shutil.rmtree(candidate_dir, ignore_errors=True)
        write_merge(plan_merge(parse_merge_config(breadcrumbs_config(preset, slerped, candidate), source="preset candidate")), candidate_dir)
        try:
            return evaluate(candidate_dir)
        finally:
            shutil.rmtree(candidate_dir, ignore_errors=True)

    dimensions = [Dimension(f"{name}_{i}", *preset.bounds[name]) for i in range(len(slerped)) for name in SEARCHED]
    start = {d.name: (d.low + d.high) / 2 for d in dimensions}
    published = {f"{name}_{i}": PUBLISHED[name] for i in range(len(slerped)) for name in SEARCHED}
    inside = all(d.low <= published[d.name] <= d.high for d in dimensions)
    trials = evolutionary_search(
        dimensions,
        objective,
        budget=preset.budget,
        seed=preset.seed,
        population=preset.population,
        initial=[published, start] if inside else [start],
        log=preset.work_dir / "search_trials.jsonl",
        context=value_hash({"slerps": slerp_keys, "evaluator": judge, "dtype": preset.dtype, "base": base}),
    )
    best = best_trial(trials)
    final = breadcrumbs_config(preset, slerped, best.candidate)
    staging = staging_for(preset.output / "model")
    write_merge(plan_merge(parse_merge_config(final, source="preset result")), staging)
    (staging / MERGE_CONFIG_NAME).write_text(yaml.safe_dump(final, sort_keys=False), encoding="utf-8")
    held_out: dict[str, Any] = {"score": float(report(staging)), "evaluator": evaluator_fingerprint(report)} if report is not None else {"score": None, "note": "no separate report set: the best score above is the selection score"}
    summary = {
        "slerp": {"t": slerp_t, "scores": slerp_scores},
        "search": {"budget": preset.budget, "evaluations": len(trials), "best_score": best.score, "best": best.candidate},
        "selection": {"evaluator": judge},
        "report": held_out,
    }
    write_json(staging / PRESET_REPORT_NAME, summary)
    publish_merge(folder, staging)
    return PresetResult(preset.output, slerp_t, best, trials, held_out["score"])


def _choose_slerp(preset: MediPhiPreset, index: int, expert: Path, evaluate: Evaluator, key: str) -> tuple[Path, float, dict[str, float]]:
    """SLERP ``expert`` into the base at each ratio, keep the best-scoring one (reused when ``key`` matches)."""
    chosen = preset.work_dir / f"slerp_{index}"
    record = preset.work_dir / f"slerp_{index}.json"
    if record.is_file() and (chosen / "config.json").is_file():
        saved = json.loads(record.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            return chosen, saved["t"], saved["scores"]
    record.unlink(missing_ok=True)
    scores: dict[str, float] = {}
    best_t, best_score = None, float("-inf")
    trial_dir = preset.work_dir / f"slerp_{index}.trial"
    for t in preset.t_choices:
        config = {
            "merge_method": "slerp",
            "base_model": str(preset.base_model),
            "models": [{"model": str(preset.base_model)}, {"model": str(expert)}],
            "parameters": {"t": t},
        }
        if preset.dtype:
            config["dtype"] = preset.dtype
        shutil.rmtree(trial_dir, ignore_errors=True)
        write_merge(plan_merge(parse_merge_config(config, source=f"slerp expert {index}")), trial_dir)
        scores[str(t)] = score = float(evaluate(trial_dir))
        if score > best_score:
            best_t, best_score = t, score
            shutil.rmtree(chosen, ignore_errors=True)
            os.replace(trial_dir, chosen)
        else:
            shutil.rmtree(trial_dir, ignore_errors=True)
    if best_t is None:
        raise ConfigError(f"slerp expert {expert}: the evaluator returned no comparable score ({scores})")
    write_json(record, {"expert": str(expert), "key": key, "t": best_t, "scores": scores})
    return chosen, best_t, scores
