"""The one LLM-step contract, its runner, and one stage in one call; see :mod:`mediflow.steps.contract`,
:mod:`mediflow.steps.runner` and :mod:`mediflow.steps.stage`."""

from mediflow.steps.contract import Answer, LLMStep, PromptStep, Reject, StepResult, ask
from mediflow.steps.runner import gather_all, map_ordered, run_step
from mediflow.steps.stage import LLMStageResult, open_engine, run_llm_stage, run_llm_stage_async

__all__ = [
    "Answer",
    "LLMStageResult",
    "LLMStep",
    "PromptStep",
    "Reject",
    "StepResult",
    "ask",
    "gather_all",
    "map_ordered",
    "open_engine",
    "run_llm_stage",
    "run_llm_stage_async",
    "run_step",
]
