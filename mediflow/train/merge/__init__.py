"""Model merging, streamed tensor by tensor over safetensors shards.

Configs use mergekit's YAML format (the subset our methods need: linear, task_arithmetic, ties,
dare_ties, dare_linear, breadcrumbs, breadcrumbs_ties, slerp, model_stock), so a config moves
between the two tools; the maths is ours (:mod:`.methods`), checked tensor by tensor against
mergekit 0.1.5 in the tests. :mod:`.preset` runs the MediPhi recipe (SLERP each expert into the
base, then BreadCrumbs-TIES with a budgeted search) driven by an ``evaluate(model_dir) -> float`` hook.
"""

from mediflow.train.merge.catalog import METHODS, MethodSpec
from mediflow.train.merge.config import MergeConfig, load_merge_config, parse_merge_config
from mediflow.train.merge.engine import run_merge
from mediflow.train.merge.evaluation import Evaluator, build_evaluator
from mediflow.train.merge.preset import MediPhiPreset, PresetResult, load_preset, run_mediphi_preset
from mediflow.train.merge.tensor_plans import merge_tensors

__all__ = [
    "METHODS",
    "Evaluator",
    "MediPhiPreset",
    "MergeConfig",
    "MethodSpec",
    "PresetResult",
    "build_evaluator",
    "load_merge_config",
    "load_preset",
    "merge_tensors",
    "parse_merge_config",
    "run_mediphi_preset",
    "run_merge",
]
