"""The one LLM-step contract and its runner; see :mod:`mediflow.steps.contract` and :mod:`mediflow.steps.runner`."""

from mediflow.steps.contract import Answer, LLMStep, PromptStep, Reject, StepResult, ask
from mediflow.steps.runner import map_ordered, run_step

__all__ = ["Answer", "LLMStep", "PromptStep", "Reject", "StepResult", "ask", "map_ordered", "run_step"]
