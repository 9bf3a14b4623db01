"""SFT throughput benchmark: ``mediflow train sft`` against a plain PyTorch loop on the same batches.

"Ours" is the real SFT path (:func:`mediflow.train.align.build_sft_trainer`: TRL's ``SFTTrainer``
with assistant-only loss, built from a stage config) on synthetic MediFlow records. Its data
collator is wrapped so every batch it hands the trainer is recorded; the *baseline* ("plain loop")
then loads the same model folder afresh and runs forward / backward / AdamW step / zero_grad on
exactly those batches, in the same order. Both report non-padding input tokens per second over
the steps after ``--warmup``, so the ratio is the overhead of the trainer stack (TRL's collation,
its per-step metrics, accelerate, logging), which is what a regression guard should watch.

    python benchmarks/train_sft.py                               # CPU, the tiny Phi-3 of the tests
    python benchmarks/train_sft.py --min-ratio 0.6               # exit 1 below 0.6x the plain loop
    python benchmarks/train_sft.py --device cuda                 # ~0.5B Qwen2-shaped model, bf16, + MFU

``--device cuda`` builds a Qwen2-0.5B-shaped model (random weights, from a local config) and trains
it with bf16 autocast; MFU is model FLOPs (6 per linear parameter per token, plus attention's
12 x layers x hidden x sequence) per second over the GPU's dense bf16 peak (``--peak-tflops``, or
looked up from the device name).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

#: Dense bf16 peak TFLOP/s by device-name fragment (vendor datasheets, no sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "RTX 4090": 165.0}

#: The GPU model: Qwen2-0.5B's shape (~494M parameters with tied embeddings).
GPU_MODEL_SHAPE = {
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}

_FINDINGS = [
    "community-acquired pneumonia treated with amoxicillin 500 mg three times daily",
    "a 4 mm nodule in the right upper lobe without pleural effusion",
    "type 2 diabetes mellitus with chronic kidney disease stage 3",
    "heart failure exacerbation managed with intravenous furosemide",
    "no acute cardiopulmonary process on the chest radiograph",
]


def synthetic_records(count: int, sentences: int) -> list[dict[str, Any]]:
    """MediFlow-shaped records (system instruction, user document, JSON answer) of similar length."""
    from mediflow.records import to_messages

    records = []
    for index in range(count):
        document = " ".join(f"Day {day}: patient {index} seen for {_FINDINGS[(index + day) % len(_FINDINGS)]}." for day in range(sentences))
        answer = f'{{"patient": {index}, "diagnosis": "{_FINDINGS[index % len(_FINDINGS)].split(" treated")[0]}"}}'
        records.append({"messages": to_messages("Extract the main diagnosis as JSON.", document, answer)})
    return records


def fitting_sentences(model_dir: Path, max_length: int) -> int:
    """How many document sentences keep a whole record within ~90% of ``max_length`` tokens, so
    truncation never cuts the assistant answer (the only tokens with loss)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def length(sentences: int) -> int:
        text = tokenizer.apply_chat_template(synthetic_records(1, sentences)[0]["messages"], tokenize=False)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    one, two = length(1), length(2)
    return max(1, int((0.9 * max_length - one) // max(1, two - one)) + 1)


def build_model(folder: Path, device: str) -> Path:
    """The tiny Phi-3 of the tests (CPU), or a Qwen2-0.5B-shaped model with the same tokenizer (GPU)."""
    from tiny_models import build_tiny_phi3, build_tiny_tokenizer

    if device == "cpu":
        return build_tiny_phi3(folder)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(folder)
    config = Qwen2Config(
        **GPU_MODEL_SHAPE,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return folder


class RecordingCollator:
    """Wraps a data collator and keeps (a CPU copy of) every batch it produced, in order."""

    def __init__(self, collator: Any):
        self.collator = collator
        self.batches: list[dict[str, Any]] = []

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        self.batches.append({key: value.clone() for key, value in batch.items() if hasattr(value, "clone")})
        return batch


@dataclass
class Throughput:
    tokens: int
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds


def _tokens(batch: dict[str, Any]) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_ours(model: Path, data: Path, work: Path, args: argparse.Namespace) -> tuple[Throughput, list[dict[str, Any]], Any]:
    """Train with the real SFT stage; time the steps after the warm-up with a trainer callback."""
    from transformers import TrainerCallback

    from mediflow.train.align import build_sft_trainer
    from mediflow.train.config import config_from_dict

    begins: list[float] = []
    ends: list[float] = []

    class StepClock(TrainerCallback):
        """Wall-clock marks at each step's start and end (the optimizer step done)."""

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            _sync(args.device)
            begins.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            _sync(args.device)
            ends.append(time.perf_counter())

    on_gpu = args.device == "cuda"
    config = config_from_dict(
        {
            "model": {"name_or_path": str(model), "dtype": "float32"},
            "data": {"train": str(data), "max_length": args.max_length},
            "output": {"dir": str(work / "sft"), "logging_steps": 10, "save_steps": 10**9, "save_total_limit": None},
            "train": {
                "batch_size": args.batch_size,
                "max_steps": args.warmup + args.steps,
                "learning_rate": 1e-4,
                "bf16": on_gpu,
                "use_cpu": not on_gpu,
                "extra": {"save_strategy": "no", "dataloader_drop_last": True},
            },
        },
        "sft",
    )
    trainer = build_sft_trainer(config, callbacks=[StepClock()])
    recorder = RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    trainer.train()
    trained = recorder.batches[: args.warmup + args.steps]
    tokens = sum(_tokens(batch) for batch in trained[args.warmup :])
    return Throughput(tokens, ends[-1] - begins[args.warmup]), trained, trainer.model


def run_plain_loop(model_dir: Path, batches: list[dict[str, Any]], args: argparse.Namespace) -> Throughput:
    """The baseline: forward, backward, AdamW step and zero_grad on the same batches, nothing else."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    autocast = torch.autocast(args.device, dtype=torch.bfloat16, enabled=args.device == "cuda")
    started, tokens = 0.0, 0
    for index, batch in enumerate(batches):
        if index == args.warmup:
            _sync(args.device)
            started = time.perf_counter()
        batch = {key: value.to(args.device) for key, value in batch.items()}
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= args.warmup:
            tokens += _tokens(batch)
    _sync(args.device)
    return Throughput(tokens, time.perf_counter() - started)


def model_flops_per_token(model: Any, sequence_length: float) -> float:
    """Training FLOPs per token: 6 per weight of every linear layer (the tied head included), plus
    attention's score and value products (12 x layers x hidden x sequence, forward + backward)."""
    import torch

    linear = sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))
    config = model.config
    return 6 * linear + 12 * config.num_hidden_layers * config.hidden_size * sequence_length


def peak_tflops(args: argparse.Namespace) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    import torch

    name = torch.cuda.get_device_name()
    return next((peak for fragment, peak in PEAK_BF16_TFLOPS.items() if fragment in name), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--steps", type=int, help="timed steps (default: 30 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels, caches)")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default 8)")
    parser.add_argument("--max-length", type=int, help="default: 256 on CPU, 2048 on CUDA")
    parser.add_argument("--repeats", type=int, default=3, help="measure both this many times; report the medians")
    parser.add_argument("--min-ratio", type=float, default=0.0, help="exit 1 when ours / plain loop falls below this")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, for MFU (default: by device name)")
    args = parser.parse_args()
    on_gpu = args.device == "cuda"
    args.steps = args.steps or (50 if on_gpu else 30)
    args.batch_size = args.batch_size or 8
    args.max_length = args.max_length or (2048 if on_gpu else 256)

    import torch
    import transformers
    import trl

    if on_gpu and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    work = Path(tempfile.mkdtemp(prefix="mediflow-sft-bench-"))
    try:
        model_dir = build_model(work / "model", args.device)
        records = synthetic_records(args.batch_size * (args.warmup + args.steps), fitting_sentences(model_dir, args.max_length))
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), work / "records.parquet")
        device_name = torch.cuda.get_device_name() if on_gpu else f"CPU x {torch.get_num_threads()} threads"
        print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}; {device_name}")

        ours_runs, plain_runs = [], []
        model = None
        batches: list[dict[str, Any]] = []
        for repeat in range(args.repeats):
            ours, batches, model = run_ours(model_dir, work / "records.parquet", work / f"run{repeat}", args)
            plain = run_plain_loop(model_dir, batches, args)
            ours_runs.append(ours.tokens_per_second)
            plain_runs.append(plain.tokens_per_second)
            print(f"  run {repeat + 1}: mediflow sft {ours.tokens_per_second:10.0f} tok/s   plain loop {plain.tokens_per_second:10.0f} tok/s   ({ours.tokens} tokens in {args.steps} steps)", flush=True)
            shutil.rmtree(work / f"run{repeat}", ignore_errors=True)
        parameters = sum(p.numel() for p in model.parameters())
        mean_length = statistics.mean(_tokens(b) / b["input_ids"].shape[0] for b in batches[args.warmup :])
        ours_tps, plain_tps = statistics.median(ours_runs), statistics.median(plain_runs)
        ratio = ours_tps / plain_tps
        print(f"\nmodel: {parameters / 1e6:.2f}M parameters; batch {args.batch_size} x ~{mean_length:.0f} tokens (max_length {args.max_length}); {args.steps} timed steps after {args.warmup} warm-up; median of {args.repeats}")
        print(f"{'':22s}{'tokens/s':>12s}")
        print(f"{'mediflow train sft':22s}{ours_tps:12.0f}")
        print(f"{'plain loop (baseline)':22s}{plain_tps:12.0f}")
        print(f"{'ratio':22s}{ratio:12.2f}x")
        if on_gpu:
            peak = peak_tflops(args)
            flops = model_flops_per_token(model, mean_length)
            for label, tps in (("mediflow train sft", ours_tps), ("plain loop", plain_tps)):
                achieved = flops * tps / 1e12
                mfu = f"{100 * achieved / peak:.1f}%" if peak else "unknown peak (pass --peak-tflops)"
                print(f"MFU {label}: {achieved:.1f} TFLOP/s, {mfu}")
        if ratio < args.min_ratio:
            print(f"REGRESSION: ours is {ratio:.2f}x the plain loop, below --min-ratio {args.min_ratio}")
            return 1
        return 0 if math.isfinite(ratio) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
