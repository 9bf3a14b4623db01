"""Which tokens of a conversation carry the loss: every assistant turn, found from the template itself.

SFT trains on the assistant's words and on the token that ends its turn, in every assistant turn
of a conversation, never on the system, user or template text. The mask comes from one of two
sources, both reading the same rendering the model is trained on:

* **markers** (:data:`~mediflow.train.templates.ASSISTANT_ONLY`): the template's ``{% generation %}``
  blocks, through transformers' ``return_assistant_tokens_mask`` (what TRL's ``assistant_only_loss`` uses);
* **prefixes** (:data:`~mediflow.train.templates.COMPLETION_ONLY`): for each assistant turn ``i``,
  the tokens between the rendered prompt of that turn (the conversation before it, generation prompt
  added) and the rendered conversation up to and including it. On a one-turn conversation this is
  exactly TRL's completion-only rule (the answer starts where the prompt and the whole conversation
  stop sharing tokens); it is applied to every turn, where TRL's prompt/completion rows would train
  only the last one.

A template that renders an earlier turn differently once later turns follow cannot be masked per
turn: that row is refused with one line naming it (use a template with generation markers). Rows
come out tokenized (``input_ids``, ``completion_mask``), which TRL's ``SFTTrainer`` trains on as they
are, and the count of rows and trained turns per row kind (one turn, several turns) goes into the
stage's manifest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mediflow.errors import MediflowError
from mediflow.train.templates import ASSISTANT_ONLY


@dataclass(frozen=True)
class TokenizedConversation:
    """One conversation as the trainer sees it: token ids, and 1 on every token that carries loss."""

    input_ids: list[int]
    completion_mask: list[int]
    assistant_turns: int

    @property
    def trained_turns(self) -> int:
        """How many separate stretches of the row carry loss (one per trained assistant turn)."""
        return sum(1 for i, bit in enumerate(self.completion_mask) if bit and (i == 0 or not self.completion_mask[i - 1]))

    @property
    def first_trained(self) -> int:
        """The index of the first token that carries loss (where a cut row must still reach)."""
        return self.completion_mask.index(1) if 1 in self.completion_mask else len(self.completion_mask)

    def as_row(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "completion_mask": self.completion_mask}


def _ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool, kwargs: Mapping[str, Any]) -> list[int]:
    """The token ids of a rendered conversation, tokenized the way TRL tokenizes it."""
    encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, add_generation_prompt=generation_prompt, **kwargs)
    return list(encoded["input_ids"])


def _common_prefix(first: list[int], second: list[int]) -> int:
    length = 0
    for a, b in zip(first, second):
        if a != b:
            break
        length += 1
    return length


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]], masking: str, template_kwargs: Mapping[str, Any] | None = None, *, where: str = "row") -> TokenizedConversation:
    """``messages`` tokenized with the tokenizer's (training) chat template, every assistant turn masked in.

    ``masking`` is the plan's (:func:`~mediflow.train.templates.plan_chat_template`): generation
    markers or rendered prefixes (see the module docstring). ``where`` names the row in an error.
    """
    kwargs = dict(template_kwargs or {})
    turns = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if not turns:
        raise MediflowError(f"sft: {where} has no assistant turn to train on")
    if masking == ASSISTANT_ONLY:
        encoded = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs)
        ids, mask = list(encoded["input_ids"]), [int(bit) for bit in encoded["assistant_masks"]]
    else:
        ids = _ids(tokenizer, messages, generation_prompt=False, kwargs=kwargs)
        mask = [0] * len(ids)
        for turn, index in enumerate(turns, start=1):
            through = ids if index == len(messages) - 1 else _ids(tokenizer, messages[: index + 1], generation_prompt=False, kwargs=kwargs)
            if through != ids[: len(through)]:
                raise MediflowError(
                    f"sft: {where}: the chat template renders assistant turn {turn} of {len(turns)} differently once later turns follow, "
                    "so its tokens cannot be found from the rendered prefix; set model.chat_template to a template with {% generation %} markers"
                )
            start = _common_prefix(_ids(tokenizer, messages[:index], generation_prompt=True, kwargs=kwargs), through)
            mask[start : len(through)] = [1] * (len(through) - start)
    row = TokenizedConversation(ids, mask, len(turns))
    if row.trained_turns != len(turns):
        raise MediflowError(
            f"sft: {where}: {len(turns)} assistant turns but {row.trained_turns} trained by the chat template's masking; "
            "every assistant turn must carry loss (set model.chat_template to a template whose {% generation %} blocks cover every assistant turn)"
        )
    return row


@dataclass
class MaskingReport:
    """What the loss covered, per kind of row: what the manifest says under ``masking``."""

    how: str
    reason: str
    kinds: dict[str, dict[str, int]] = field(default_factory=dict)

    def count(self, row: TokenizedConversation) -> None:
        kind = "single_turn" if row.assistant_turns == 1 else "multi_turn"
        entry = self.kinds.setdefault(kind, {"rows": 0, "assistant_turns": 0, "trained_turns": 0})
        entry["rows"] += 1
        entry["assistant_turns"] += row.assistant_turns
        entry["trained_turns"] += row.trained_turns

    def as_dict(self) -> dict[str, Any]:
        source = "generation markers" if self.how == ASSISTANT_ONLY else "the rendered prefix of each assistant turn"
        return {"masking": self.how, "reason": self.reason, "loss_on": f"every assistant turn, found by {source}", "rows": self.kinds}
