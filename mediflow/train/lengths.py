"""Length handling a user can see and control: every stage counts what ``max_length`` costs it.

Trainers truncate silently: a cut document trains on its first tokens, a cut answer trains without
its end-of-turn token (so the model learns not to stop), a row whose answer is cut off entirely is
dropped. Here each stage measures its rows with the tokenizer *before* training and decides:

* conversations (SFT), preference pairs (DPO) and PIT task rows longer than ``data.max_length`` are
  dropped (``data.overlong: drop``, the default) or kept cut (``cut``);
* PIT documents are split into ``max_length`` chunks that overlap by ``data.chunk_overlap`` tokens,
  so no text is lost;

and reports rows in, kept, dropped, cut and tokens lost, in the log and in the stage's manifest,
warning when more than ``data.warn_fraction`` of the rows were dropped or cut.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

from mediflow.errors import MediflowError

#: Room left for the special tokens a trainer adds around a plain-text row (BOS, EOS).
_SPECIAL_MARGIN = 2


@dataclass
class LengthReport:
    """What ``max_length`` did to one stage's rows."""

    stage: str
    max_length: int
    rows: int = 0
    kept: int = 0
    dropped: int = 0
    cut: int = 0
    tokens: int = 0
    tokens_lost: int = 0
    documents_chunked: int = 0
    chunks: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        chunked = f", {self.documents_chunked} documents split into {self.chunks} chunks" if self.documents_chunked else ""
        return (
            f"{self.stage}: {self.kept} of {self.rows} rows trained at max_length={self.max_length} "
            f"({self.dropped} dropped, {self.cut} cut, {self.tokens_lost} of {self.tokens} tokens lost{chunked})"
        )

    def announce(self, warn_fraction: float) -> None:
        """Print the counts; warn when the losses pass the threshold."""
        print(self.line(), flush=True)
        if self.rows and (self.dropped + self.cut) / self.rows > warn_fraction:
            warnings.warn(
                f"{self.stage}: {self.dropped + self.cut} of {self.rows} rows do not fit data.max_length={self.max_length}; "
                "raise data.max_length or set data.overlong",
                stacklevel=2,
            )


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def _decide(report: LengthReport, total: int, prompt: int, overlong: str) -> bool:
    """Count one row of ``total`` tokens whose answer starts after ``prompt`` tokens; True to keep it."""
    report.rows += 1
    report.tokens += total
    if total <= report.max_length:
        report.kept += 1
        return True
    if overlong == "cut" and prompt < report.max_length:
        report.cut += 1
        report.kept += 1
        report.tokens_lost += total - report.max_length
        return True
    report.dropped += 1
    report.tokens_lost += total
    return False


def fit_conversations(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, overlong: str, stage: str = "sft") -> tuple[list[dict[str, Any]], LengthReport]:
    """SFT rows (``messages`` or conversational ``prompt``/``completion``) that fit, and the counts."""
    report = LengthReport(stage, max_length)
    kept = []
    for row in rows:
        messages = row["messages"] if "messages" in row else row["prompt"] + row["completion"]
        prompt = messages[:-1]
        total = _count(tokenizer, _render(tokenizer, messages, False))
        prefix = _count(tokenizer, _render(tokenizer, prompt, True))
        if _decide(report, total, prefix, overlong):
            kept.append(row)
    return kept, report


def fit_preferences(
    rows: list[dict[str, Any]], tokenizer: Any, max_length: int, overlong: str, stage: str = "dpo", required: bool = True
) -> tuple[list[dict[str, Any]], LengthReport]:
    """DPO pairs whose prompt + chosen and prompt + rejected both fit; one line when none does and ``required``."""
    report = LengthReport(stage, max_length)
    kept = []
    for row in rows:
        prefix = _count(tokenizer, _render(tokenizer, row["prompt"], True))
        total = max(_count(tokenizer, _render(tokenizer, row["prompt"] + row[side], False)) for side in ("chosen", "rejected"))
        if _decide(report, total, prefix, overlong):
            kept.append(row)
    if required and rows and not kept:
        raise MediflowError(
            f"{stage}: none of the {len(rows)} preference pairs fits data.max_length={max_length} "
            "(prompt + answer); raise data.max_length or set data.overlong=cut"
        )
    return kept, report


def fit_completions(rows: list[dict[str, str]], tokenizer: Any, max_length: int, overlong: str, report: LengthReport) -> list[dict[str, str]]:
    """PIT task rows (plain prompt/completion) that fit, counted into ``report``."""
    kept = []
    for row in rows:
        prompt = _count(tokenizer, row["prompt"]) + 1
        total = prompt + _count(tokenizer, row["completion"]) + _SPECIAL_MARGIN - 1
        if _decide(report, total, prompt, overlong):
            kept.append(row)
    return kept


def chunk_documents(texts: list[str], tokenizer: Any, max_length: int, overlap: int, report: LengthReport) -> list[str]:
    """Each document as consecutive windows of at most ``max_length`` tokens overlapping by ``overlap``.

    Windows are cut at token boundaries through the tokenizer's character offsets, so each chunk is
    the exact original text of its tokens and nothing is lost or re-spelled.
    """
    window = max_length - _SPECIAL_MARGIN
    if overlap >= window:
        raise MediflowError(f"data.chunk_overlap={overlap} leaves no new tokens per chunk at data.max_length={max_length}")
    chunks: list[str] = []
    for text in texts:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = encoded["offset_mapping"]
        report.rows += 1
        report.kept += 1
        report.tokens += len(offsets)
        if len(offsets) <= window:
            chunks.append(text)
            continue
        report.documents_chunked += 1
        start = 0
        while True:
            end = min(start + window, len(offsets))
            chunks.append(text[offsets[start][0] : offsets[end - 1][1]])
            report.chunks += 1
            if end == len(offsets):
                break
            start = end - overlap
    return chunks
