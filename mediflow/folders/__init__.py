"""The one output-folder contract and the one input reader (see docs/architecture.md).

* :class:`OutputFolder` (``output.py``): layout, guards, lock, manifest life cycle, leftovers.
* :class:`StagedWriter` (``staged.py``): a stage's kept/rejected records, published at the end.
* :func:`open_input` (``reader.py``): a folder's kept records, or a file, checked before any work.
* ``atomic.py``: the one atomic writer; ``manifest.py``: the typed manifest; ``guards.py``: the one guard for every
  written path (:func:`check_output`), links inside an output, the lock.
* ``model.py``: what a model folder (training, merge) adds: its layout, :func:`publish_model` and
  :func:`check_model_input`.
"""

from mediflow.folders.atomic import write_atomically, write_json, write_parquet, write_text
from mediflow.folders.guards import FolderLock, check_no_links, check_no_overlap, check_not_in_use, check_output, lock_holder, make_parent, reading, refuse_link
from mediflow.folders.manifest import InputRef, Manifest, read_manifest
from mediflow.folders.output import CACHE_NAME, DATA_DIR, REJECTS_NAME, OutputFolder, config_fingerprint, shard_name
from mediflow.folders.reader import InputData, open_input, read_batches, read_file, with_ids
from mediflow.folders.staged import REJECT_FIELDS, StagedWriter, reject_schema, reject_table

__all__ = [
    "CACHE_NAME",
    "DATA_DIR",
    "REJECTS_NAME",
    "REJECT_FIELDS",
    "FolderLock",
    "InputData",
    "InputRef",
    "Manifest",
    "OutputFolder",
    "StagedWriter",
    "check_no_links",
    "check_no_overlap",
    "check_not_in_use",
    "check_output",
    "config_fingerprint",
    "lock_holder",
    "make_parent",
    "open_input",
    "read_batches",
    "read_file",
    "read_manifest",
    "reading",
    "refuse_link",
    "reject_schema",
    "reject_table",
    "shard_name",
    "with_ids",
    "write_atomically",
    "write_json",
    "write_parquet",
    "write_text",
]
