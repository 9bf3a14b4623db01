"""Chat templates kept honest: the model's own template is used and saved; ours only where it is proven equal.

Assistant-only loss (TRL's ``assistant_only_loss``) finds the answer's tokens through
``{% generation %}`` markers, which most released templates lack. Swapping in a marked-up template
of "the same layout" is only safe when it renders *token for token* what the native one renders:
otherwise the model is trained on one layout and served with another (a Phi-4-mini-style template
renders ``<|system|>S<|end|>``, a Phi-3 copy ``<|system|>\\nS<|end|>\\n``). So:

1. the native template has markers: use it;
2. our marked copy (or the configured one) renders the sample conversations identically: train with
   it, save the native one;
3. otherwise: keep the native template and mask by the rendered prefix (TRL's completion-only loss
   on conversational prompt/completion rows: the loss starts where the rendered prompt ends).

A model with no template at all (the packaged Gemma-3-270M) gets the shipped template of its layout,
recognised from its vocabulary, and that template, without the markers, is what is saved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError
from mediflow.resources import prompts_dir

#: Tokens that end an assistant turn in the chat layouts we know; generation stops on any of them.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|end|>", "<|im_end|>", "<|eot_id|>")

#: How to recognise a chat layout from its template text or vocabulary, to pick our marked-up copy.
TEMPLATE_FAMILIES = (("<start_of_turn>", "gemma"), ("<|assistant|>", "phi3"), ("<|im_start|>", "chatml"))

ASSISTANT_ONLY = "assistant_only"
COMPLETION_ONLY = "completion_only"

#: Conversations the render check compares on: with and without a system turn, and two rounds.
SAMPLE_CONVERSATIONS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("system", "Summarize the note."), ("user", "Patient admitted with pneumonia."), ("assistant", "Pneumonia, treated.")),
    (("user", "What is the diagnosis?"), ("assistant", "Heart failure.")),
    (
        ("system", "Answer in JSON."),
        ("user", "List the drugs."),
        ("assistant", '{"drugs": ["amoxicillin"]}'),
        ("user", "And the doses?"),
        ("assistant", '{"doses": ["500 mg"]}'),
    ),
)

_MARKERS = re.compile(r"\{%-?\s*(generation|endgeneration)\s*-?%\}")


@dataclass(frozen=True)
class TemplatePlan:
    """Which template training uses, how the loss is masked, and which template is saved."""

    training_template: str
    saved_template: str
    masking: str  # ASSISTANT_ONLY or COMPLETION_ONLY
    reason: str


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


def strip_generation_markers(template: str) -> str:
    """The template without ``{% generation %}`` / ``{% endgeneration %}`` (what servers other than transformers read)."""
    return _MARKERS.sub("", template)


def has_generation_markers(template: str | None) -> bool:
    return bool(template) and "generation" in {m.group(1) for m in _MARKERS.finditer(template or "")}


def family_template(tokenizer: Any, native: str | None) -> str | None:
    """Our marked copy of the layout the native template (or, without one, the vocabulary) uses."""
    vocab = tokenizer.get_vocab()
    for marker, name in TEMPLATE_FAMILIES:
        if (native and marker in native) or (not native and marker in vocab):
            return shipped_chat_template(name)
    return None


def _render(tokenizer: Any, template: str, messages: list[dict[str, str]], generation_prompt: bool) -> list[int]:
    text = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def renders_identically(tokenizer: Any, first: str, second: str) -> bool:
    """Whether two templates give the same token ids on every sample conversation (and its prompt part)."""
    for conversation in SAMPLE_CONVERSATIONS:
        messages = [{"role": role, "content": content} for role, content in conversation]
        for part, generation_prompt in ((messages, False), (messages[:-1], True)):
            try:
                if _render(tokenizer, first, part, generation_prompt) != _render(tokenizer, second, part, generation_prompt):
                    return False
            except Exception:  # a template that cannot render a sample (e.g. refuses a system turn) is not equal
                return False
    return True


def plan_chat_template(tokenizer: Any, configured: str | None) -> TemplatePlan:
    """Decide the training template, the masking and the saved template for ``tokenizer``'s model."""
    native = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    marked = shipped_chat_template(configured) if configured else family_template(tokenizer, native)
    if native is None:
        if marked is None:
            raise ConfigError(
                "model.chat_template: the model has no chat template and its layout is not recognised; "
                "set model.chat_template to a .jinja file (with {% generation %} markers)"
            )
        masking = ASSISTANT_ONLY if has_generation_markers(marked) else COMPLETION_ONLY
        return TemplatePlan(marked, strip_generation_markers(marked), masking, "the model has no chat template: the configured/recognised one is used and saved")
    if has_generation_markers(native):
        return TemplatePlan(native, native, ASSISTANT_ONLY, "the native template has generation markers")
    if marked is not None and has_generation_markers(marked) and renders_identically(tokenizer, native, marked):
        return TemplatePlan(marked, native, ASSISTANT_ONLY, "a marked copy renders token-for-token like the native template")
    return TemplatePlan(native, native, COMPLETION_ONLY, "no marked template renders like the native one: loss from the rendered prefix on")


def end_of_turn_ids(tokenizer: Any, template: str | None) -> list[int]:
    """The eos id plus every end-of-turn token the template emits (generation must stop on each)."""
    vocab = tokenizer.get_vocab()
    ids = {tokenizer.eos_token_id}
    ids |= {vocab[token] for token in END_OF_TURN_TOKENS if token in vocab and (template is None or token in template)}
    return sorted(i for i in ids if i is not None)
