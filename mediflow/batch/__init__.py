"""Provider batch APIs for every teacher stage (``mode: batch``, flag ``--batch``): about half the price.

A stage in batch mode runs in rounds (:mod:`mediflow.batch.runner`): a pass answers what the cache
holds and defers every miss into JSONL batch files (``custom_id`` = the cache key;
:mod:`mediflow.batch.files`), which go to the provider's batch service (OpenAI, Azure OpenAI and
other OpenAI-style services through the ``openai`` SDK, or vLLM's ``run_batch`` offline;
:mod:`mediflow.batch.providers`); their answers land in the same per-request cache, and the next
pass goes further, until nothing is missing. Then the stage runs as it does online, from the
cache. Every batch is recorded in ``OUT/batches/state.json`` (:mod:`mediflow.batch.state`) before
and after each submission, so a killed run resumes without submitting anything twice;
``mediflow batches OUT`` lists a run's batches (``--cancel`` cancels them).

Only the config is imported here (every command's flags read it); the runner, which brings the
HTTP client stack, is imported by the stages that run in batch mode.
"""

from mediflow.batch.config import BatchConfig, Mode, check_mode

__all__ = ["BatchConfig", "Mode", "check_mode"]
