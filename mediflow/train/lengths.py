"""Length handling a user can see and control: every stage counts what ``max_length`` costs it.

Trainers truncate silently: a cut document trains on its first tokens, a cut answer trains without
its end-of-turn token (so the model learns not to stop), a row whose answer is cut off entirely is
dropped. Here each stage measures its rows with the tokenizer *before* training and decides:

* conversations (SFT, measured as the trainer tokenizes them, :mod:`.masking`), preference pairs
  (DPO) and PIT task rows longer than ``data.max_length`` are dropped (``data.overlong: drop``, the
  default) or kept cut (``cut``, only when the cut row still trains on something);
* PIT documents are split into ``max_length`` chunks that overlap by ``data.chunk_overlap`` tokens,
  so no text is lost;

and reports rows in, kept, dropped, cut and tokens lost, in the log and in the stage's manifest,
warning when more than ``data.warn_fraction`` of the rows were dropped or cut. Eval sets are
measured and reported the same way, and an eval set that length empties is an error
(:func:`require_rows`), never a run that silently evaluates nothing.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mediflow.errors import MediflowError
from mediflow.train.masking import TokenizedConversation

logger = logging.getLogger(__name__)

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
        return f"{self.stage}: {self.kept} of {self.rows} rows trained at max_length={self.max_length} ({self.dropped} dropped, {self.cut} cut, {self.tokens_lost} of {self.tokens} tokens lost{chunked})"

    def announce(self, warn_fraction: float) -> None:
        """Log the counts; warn when the losses pass the threshold."""
        logger.info(self.line())
        if self.rows and (self.dropped + self.cut) / self.rows > warn_fraction:
            warnings.warn(
                f"{self.stage}: {self.dropped + self.cut} of {self.rows} rows do not fit data.max_length={self.max_length}; raise data.max_length or set data.overlong",
                stacklevel=2,
            )


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool, kwargs: Mapping[str, Any] | None = None) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **(kwargs or {})))


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


def fit_tokenized(rows: list[TokenizedConversation], max_length: int, overlong: str, stage: str = "sft") -> tuple[list[int], LengthReport]:
    """The indices of the tokenized SFT rows that fit (or, ``cut``, still train on a token within ``max_length``), and the counts."""
    report = LengthReport(stage, max_length)
    kept = [index for index, row in enumerate(rows) if _decide(report, len(row.input_ids), row.first_trained, overlong)]
    return kept, report


def require_rows(report: LengthReport, what: str) -> None:
    """An eval (or training) set that had rows and has none left after length handling is an error, not a silent no-op."""
    if report.rows and not report.kept:
        raise MediflowError(f"{report.stage}: none of the {report.rows} {what} fits data.max_length={report.max_length}; raise data.max_length or set data.overlong=cut")


def fit_preferences(rows: list[dict[str, Any]], tokenizer: Any, max_length: int, overlong: str, stage: str = "dpo", template_kwargs: Mapping[str, Any] | None = None) -> tuple[list[dict[str, Any]], LengthReport]:
    """DPO pairs whose prompt + chosen and prompt + rejected both fit; one line when rows were given and none does."""
    report = LengthReport(stage, max_length)
    kept = []
    for row in rows:
        prefix = _count(tokenizer, _render(tokenizer, row["prompt"], True, template_kwargs))
        total = max(_count(tokenizer, _render(tokenizer, row["prompt"] + row[side], False, template_kwargs)) for side in ("chosen", "rejected"))
        if _decide(report, total, prefix, overlong):
            kept.append(row)
    require_rows(report, "preference pairs")
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
