"""Scale-out: the Ray engine (``engine: ray``) and the vLLM engine processor path; ``--shard`` lives in the pipeline."""
