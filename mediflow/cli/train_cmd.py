"""``mediflow train qa|pit|sft|dpo|eval --config X.yaml [--section-key VALUE ...]``.

Every config key is also a flag (``--train-learning-rate 1e-4``, ``--data-max-length 1024``,
``--pit-schedule '[{name: task, data: [task]}]'`` for a list of sections), from the one config
mechanism: that is the one override syntax. ``--resume`` (``train.resume_from_checkpoint``) picks up
the newest complete checkpoint; ``--allow-train-overlap`` (eval) scores records the model trained on.

Thin: parse, load the validated stage config, call :mod:`mediflow.train`. Under several GPUs the
same command runs through ``accelerate launch -m mediflow train ...`` (see ``docs/train.md``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from mediflow.configuration import add_flags, flag_overrides
from mediflow.train.config import OWN_SECTIONS, StageConfig

_STAGE_HELP = {
    "qa": "generate PIT task data (QA, summaries, entities, relations) from documents with the teacher",
    "pit": "pre-instruction-tune an expert: task data first, then task data + documents",
    "sft": "supervised fine-tuning on MediFlow records (loss on the assistant turns)",
    "dpo": "direct preference optimisation on prompt/chosen/rejected pairs",
    "eval": "perplexity per document domain and EM / JSON validity / field F1 per task",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mediflow train`` and its stage sub-commands."""
    train = subparsers.add_parser("train", help="train small clinical models on MediFlow data (needs the 'train' extra)")
    stages = train.add_subparsers(dest="stage", metavar="STAGE")
    for stage, help_text in _STAGE_HELP.items():
        parser = stages.add_parser(stage, help=help_text, description=help_text)
        parser.add_argument("--config", type=Path, required=stage != "eval", help="the stage's YAML config")
        add_flags(parser, StageConfig, skip=("stage", *(section for section in OWN_SECTIONS if section != stage)))
        parser.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an output folder holding another kind of folder or a run of another config or inputs (qa keeps its teacher cache)",
        )
        if stage == "eval":
            parser.add_argument("--compare", type=Path, nargs="+", metavar="REPORT", help="print saved eval reports side by side")
        parser.set_defaults(handler=_run)
    train.set_defaults(handler=lambda args: _help(train))


def _help(parser: argparse.ArgumentParser) -> int:
    """``mediflow train`` with no stage: its help, and the usage-error exit code."""
    parser.print_help()
    return 2


class _ProgressHandler(logging.Handler):
    """The CLI's own handler for the training module's log: progress lines on stdout, warnings as ``warning:`` lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            print(f"warning: {record.getMessage()}", file=sys.stderr, flush=True)
        else:
            print(record.getMessage(), file=sys.stdout, flush=True)


def show_progress(logger_name: str = "mediflow.train") -> None:
    """Show the training module's log (length counts, reuse, resume; INFO and up) on the terminal.

    The library logs; the command line decides what the user sees.
    """
    logger = logging.getLogger(logger_name)
    if not any(isinstance(handler, _ProgressHandler) for handler in logger.handlers):
        logger.addHandler(_ProgressHandler())
    logger.setLevel(logging.INFO)


def _run(args: argparse.Namespace) -> int:
    from mediflow.errors import ConfigError

    if args.stage == "eval" and args.compare:
        from mediflow.train.eval import compare_reports

        print(compare_reports(args.compare))
        return 0
    if args.config is None:
        raise ConfigError(f"mediflow train {args.stage}: --config is required")
    from mediflow.train.config import load_config

    show_progress()
    config = load_config(args.config, args.stage, flag_overrides(args))
    if args.stage == "qa":
        from mediflow.train.qa import generate_task_data

        generate_task_data(config, overwrite=args.overwrite)
    elif args.stage == "pit":
        from mediflow.train.pit import run_pit

        print(f"expert: {run_pit(config, overwrite=args.overwrite)}")
    elif args.stage == "sft":
        from mediflow.train.align import run_sft

        print(f"model: {run_sft(config, overwrite=args.overwrite)}")
    elif args.stage == "dpo":
        from mediflow.train.align import run_dpo

        print(f"model: {run_dpo(config, overwrite=args.overwrite)}")
    else:
        from mediflow.train.eval import format_reports, run_eval

        report = run_eval(config, overwrite=args.overwrite)
        print(format_reports([report]))
        print(f"report: {report['path']}")
    return 0
