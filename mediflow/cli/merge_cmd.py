"""``mediflow merge --config X.yaml --output DIR`` and ``mediflow merge --preset mediphi --config P.yaml``.

Thin: a mergekit-format config runs one streamed merge; a preset config (``--preset`` or a
``preset:`` key in the file) runs the MediPhi recipe with its budgeted search. The preset's keys are
flags too, derived from its config (:class:`mediflow.train.config.PresetConfig`: ``--search-budget 24``,
``--slerp-t-choices '[0.1, 0.5]'``, ``--evaluate-eval-config eval.yaml``); they are refused with a
mergekit-format config. Heavy imports (torch) happen only when the command runs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from mediflow.configuration import add_flags, flag_overrides
from mediflow.train.config import PresetConfig

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``mediflow merge``."""
    parser = subparsers.add_parser(
        "merge",
        help="merge models (mergekit YAML format, streamed tensor by tensor), or run the MediPhi merge preset",
        description="Merge model folders with a mergekit-format YAML config, or run a preset (--preset mediphi).",
    )
    parser.add_argument("--config", type=Path, required=True, help="a mergekit-format merge YAML, or a preset YAML")
    parser.add_argument("--output", "-o", type=Path, help="the merged model folder (a preset may set it in its file)")
    parser.add_argument("--preset", choices=("mediphi",), help="run a preset recipe instead of a single merge")
    parser.add_argument("--seed", type=int, help="a mergekit-format merge: seed for DARE's random drops (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder holding another merge (or anything else); the preset's work/ cache is kept")
    parser.add_argument("--max-shard-size", type=_size, help="a mergekit-format merge: largest output shard, e.g. 2GB, 500MB (default 2 GiB)")
    add_flags(parser, PresetConfig, skip=("preset", "output"))  # --preset and --output are the command's own
    parser.set_defaults(handler=_run)


def _size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 2GB, 500MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _run(args: argparse.Namespace) -> int:
    import yaml

    from mediflow.cli.train_cmd import show_progress
    from mediflow.errors import ConfigError
    from mediflow.textfiles import read_text

    show_progress()
    if not args.config.exists():
        raise ConfigError(f"{args.config}: config not found")
    text = read_text(args.config, "merge config", ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{args.config}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if args.preset or (isinstance(raw, dict) and "preset" in raw):
        single = [flag for flag, value in (("--seed", args.seed), ("--max-shard-size", args.max_shard_size)) if value is not None]
        if single:  # options of one streamed merge; the preset seeds its search with search.seed (--search-seed)
            raise ConfigError(f"{args.config}: {', '.join(single)}: options of a mergekit-format merge, and this is a preset (its search seed is --search-seed)")
        return _run_preset(args)
    preset_flags = flag_overrides(args)
    if preset_flags:
        raise ConfigError(f"{args.config}: {', '.join(sorted(preset_flags))}: keys of a preset config, and this is a mergekit-format merge")
    if args.output is None:
        raise ConfigError("mediflow merge: --output is required for a merge config")
    from mediflow.train.merge import parse_merge_config, run_merge
    from mediflow.train.merge.engine import DEFAULT_MAX_SHARD_BYTES

    config = parse_merge_config(raw, source=str(args.config))
    output = run_merge(
        config,
        args.output,
        seed=args.seed or 0,
        overwrite=args.overwrite,
        max_shard_bytes=args.max_shard_size or DEFAULT_MAX_SHARD_BYTES,
        progress=True,
        config_text=text,
    )
    print(f"merged {len(config.models)} models with {config.method.name} -> {output}")
    return 0


def _run_preset(args: argparse.Namespace) -> int:
    from mediflow.train.merge import build_evaluator, load_preset, run_mediphi_preset

    preset = load_preset(args.config, output=args.output, flags=flag_overrides(args))
    hooks = build_evaluator(preset.evaluate, args.config.resolve().parent, preset.base_model)
    result = run_mediphi_preset(preset, hooks.select, report=hooks.report, overwrite=args.overwrite, data_paths=hooks.data_paths)
    for expert, t in result.slerp_t.items():
        print(f"slerp t={t} for {expert}")
    print(f"best of {len(result.trials)} evaluations: score {result.best.score:.6g} with {result.best.candidate}")
    held_out = f"{result.report_score:.6g}" if result.report_score is not None else "none (no separate report set)"
    print(f"held-out report score: {held_out}")
    print(f"merged model -> {result.output}")
    return 0
