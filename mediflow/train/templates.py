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

Where generation stops is read from the template too (:func:`end_of_turn_ids`): a two-round
conversation is rendered and whatever closes the first answer (``<|im_end|>``, ``<end_of_turn>``, a
``[[end]]`` no code has heard of) is the end of a turn, so a template we have never seen still stops.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mediflow.errors import ConfigError
from mediflow.resources import prompts_dir

logger = logging.getLogger(__name__)

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
            raise ConfigError("model.chat_template: the model has no chat template and its layout is not recognised; set model.chat_template to a .jinja file (with {% generation %} markers)")
        masking = ASSISTANT_ONLY if has_generation_markers(marked) else COMPLETION_ONLY
        return TemplatePlan(marked, strip_generation_markers(marked), masking, "the model has no chat template: the configured/recognised one is used and saved")
    if has_generation_markers(native):
        return TemplatePlan(native, native, ASSISTANT_ONLY, "the native template has generation markers")
    if marked is not None and has_generation_markers(marked) and renders_identically(tokenizer, native, marked):
        return TemplatePlan(marked, native, ASSISTANT_ONLY, "a marked copy renders token-for-token like the native template")
    return TemplatePlan(native, native, COMPLETION_ONLY, "no marked template renders like the native one: loss from the rendered prefix on")


#: The conversation whose first answer shows what closes an assistant turn (the sentinels are plain words).
_TURN_PROBE = (("user", "First question?"), ("assistant", "FirstAnswerText"), ("user", "Second question?"), ("assistant", "SecondAnswerText"))


def turn_closing_text(tokenizer: Any, template: str, template_kwargs: Mapping[str, Any] | None = None) -> str:
    """What the template writes right after an assistant's answer: the end of a turn (``<|im_end|>\\n``).

    Rendered twice, the answer last and the answer followed by another round: what both put after
    the answer is the turn's closing (a template that closes only the last turn, or only turns that
    are followed by another, still shows it in one of them).
    """
    messages = [{"role": role, "content": content} for role, content in _TURN_PROBE]
    answer = messages[1]["content"]
    two_rounds = str(tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, **(template_kwargs or {})))
    one_round = str(tokenizer.apply_chat_template(messages[:2], chat_template=template, tokenize=False, **(template_kwargs or {})))
    after_two = two_rounds[two_rounds.index(answer) + len(answer) :]
    after_one = one_round[one_round.index(answer) + len(answer) :]
    common: str = os.path.commonprefix([after_one, after_two])
    return common or after_two[: after_two.find(messages[2]["content"])]


def end_of_turn_ids(tokenizer: Any, template: str | None, template_kwargs: Mapping[str, Any] | None = None) -> list[int]:
    """The eos id plus every added token the template writes to close an assistant turn (generation stops on each).

    Derived from the template, not from a list of layouts: see :func:`turn_closing_text`. A template
    that cannot render the probe conversation, or closes turns with no token of its own, stops at
    eos only (said in the log).
    """
    ids = {tokenizer.eos_token_id}
    if template:
        try:
            closing = turn_closing_text(tokenizer, template, template_kwargs)
        except Exception as exc:  # a template that refuses the probe (roles, a required system turn): eos only
            logger.warning("chat template: cannot render a two-round conversation (%s); generation stops at eos only", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            closing = ""
        # Added tokens only, and not whitespace: Gemma's vocabulary has "\n" as an added token, and a
        # turn's closing "<end_of_turn>\n" must not make every newline a stop.
        added = {token for token, piece in tokenizer.added_tokens_decoder.items() if str(piece.content).strip()}
        found = {token for token in tokenizer(closing, add_special_tokens=False)["input_ids"] if token in added}
        if closing.strip() and not found:
            logger.warning("chat template: an assistant turn ends with %r, which holds no token of its own; generation stops at eos only", closing)
        ids |= found
    return sorted(i for i in ids if i is not None)
