"""The one LLM-step contract and its runner; see :mod:`mediflow.steps.contract` and :mod:`mediflow.steps.runner`."""

from mediflow.steps.contract import Answer, LLMStep, PromptStep, Reject, StepResult, ask
from mediflow.steps.runner import gather_all, map_ordered, run_step

__all__ = ["Answer", "LLMStep", "PromptStep", "Reject", "StepResult", "ask", "gather_all", "map_ordered", "run_step"]
