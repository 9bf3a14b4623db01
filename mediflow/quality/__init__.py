"""Quality stages: rule filters, deduplication (and, still to come, judge, decontamination, curate)."""
