"""The filter / dedup funnel: records in and kept per stage, and drops per rule.

Every MediFlow stage writes what it dropped, with its stage, rule and reason, to the folder's
rejects, and its counts to the manifest. The funnel prefers the manifest's own ``funnel`` (exact
even when rejects were pruned) and otherwise rebuilds it from the rejects: the records kept at the
end plus everything dropped, stage by stage in the order the stages ran.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from mediflow.audit.folder import AuditFolder
from mediflow.audit.plots import bounded, new_figure
from mediflow.audit.result import CheckResult
from mediflow.config import STAGES as GENERATION_STAGES

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TITLE = "Filter and dedup funnel"
#: Longest reason text used as a rule name when a stage records a reason but no rule.
_REASON_WIDTH = 60
_IN_KEYS = ("in", "input", "records_in", "n_in")
_KEPT_KEYS = ("kept", "out", "output", "records_out", "n_out")


def funnel(folder: AuditFolder) -> CheckResult:
    """Stages with records in / kept / dropped, and drops per (stage, rule)."""
    rejects = folder.rejects
    drops = _drops_per_rule(rejects) if rejects is not None and len(rejects) else None
    manifest = folder.manifest
    stages = _manifest_funnel(manifest.get("funnel", [manifest] if {"stage", "in", "kept"} <= set(manifest) else None))
    source = "manifest"
    if stages is None and drops is not None:
        assert rejects is not None  # drops come from them
        stage_order = _stage_order(rejects["stage"].fillna("(unknown)") if "stage" in rejects else drops["stage"])
        stages = _funnel_from_rejects(drops, stage_order, kept=len(folder.frame))
        source = "rejects"
    if stages is None:
        stages = _generation_funnel(manifest)
    if stages is None:
        return CheckResult.not_available("funnel", TITLE, "no rejects and no funnel in the manifest")
    stages["kept_share"] = (stages["kept"] / stages["in"]).where(stages["in"] > 0)
    first_in, last_kept = int(stages["in"].iloc[0]), int(stages["kept"].iloc[-1])
    summary = f"{first_in} in -> {last_kept} kept over {len(stages)} stages (from the {source})"
    if drops is not None:
        top = drops.iloc[0]
        summary += f"; top drop rule: {top['stage']}/{top['rule']} ({int(top['dropped'])})"
    tables = {"Records per stage": stages}
    if drops is not None:
        tables["Drops per rule"] = drops
    numbers = {
        "stages": stages[["stage", "in", "kept"]].to_dict("records"),
        "drops_per_rule": {} if drops is None else {f"{r['stage']}/{r['rule']}": int(r["dropped"]) for r in drops.to_dict("records")},
    }
    return CheckResult(key="funnel", title=TITLE, summary=summary, numbers=numbers, tables=tables, figure=_plot(stages, drops))


def _drops_per_rule(rejects: pd.DataFrame) -> pd.DataFrame:
    """Drops per (stage, rule), most first; a stage that records no rule is grouped by its reason's first line."""
    stage = rejects["stage"] if "stage" in rejects else pd.Series(None, index=rejects.index, dtype=object)
    rule = rejects["rule"] if "rule" in rejects else pd.Series(None, index=rejects.index, dtype=object)
    reason = rejects["reason"] if "reason" in rejects else pd.Series(None, index=rejects.index, dtype=object)
    short_reason = reason.fillna("(no reason)").astype(str).str.split("\n").str[0].str.slice(0, _REASON_WIDTH)
    named = pd.DataFrame({"stage": stage.fillna("(unknown)"), "rule": rule.fillna(short_reason)})
    order = _stage_order(named["stage"])
    drops = named.value_counts().rename("dropped").reset_index()
    drops["stage_order"] = drops["stage"].map(order)
    drops = drops.sort_values(["dropped", "stage_order", "rule"], ascending=[False, True, True])
    return drops.drop(columns="stage_order").reset_index(drop=True)


def _stage_order(stages: pd.Series) -> dict[str, int]:
    """Generation stages in the order a record goes through them, then the others as they first appear."""
    seen = [s for s in dict.fromkeys(stages) if s not in GENERATION_STAGES]
    ordered = [s for s in GENERATION_STAGES if s in set(stages)] + seen
    return {name: index for index, name in enumerate(ordered)}


def _funnel_from_rejects(drops: pd.DataFrame, stage_order: dict[str, int], kept: int) -> pd.DataFrame:
    per_stage = drops.groupby("stage")["dropped"].sum()
    rows, current = [], kept + int(per_stage.sum())
    for stage in sorted(per_stage.index, key=stage_order.__getitem__):
        dropped = int(per_stage[stage])
        rows.append({"stage": stage, "in": current, "dropped": dropped, "kept": current - dropped})
        current -= dropped
    return pd.DataFrame(rows)


def _generation_funnel(manifest: Mapping[str, Any]) -> pd.DataFrame | None:
    """A ``generate`` manifest with no rejects: the planned items in, the records written kept."""
    planned = (manifest.get("plan") or {}).get("items")
    records = (manifest.get("counts") or {}).get("records")
    if not isinstance(planned, int) or not isinstance(records, int):
        return None
    return pd.DataFrame([{"stage": "generate", "in": planned, "dropped": planned - records, "kept": records}])


def _manifest_funnel(value: Any) -> pd.DataFrame | None:
    """The manifest's ``funnel``: a list of stage entries or a {stage: entry} mapping, entries with in / kept."""
    if isinstance(value, Mapping):
        value = [{"stage": name, **entry} for name, entry in value.items() if isinstance(entry, Mapping)]
    if not isinstance(value, list) or not value:
        return None
    rows: list[dict[str, Any]] = []
    for entry in value:
        if not isinstance(entry, Mapping):
            return None
        count_in = next((entry[k] for k in _IN_KEYS if k in entry), None)
        kept = next((entry[k] for k in _KEPT_KEYS if k in entry), None)
        if count_in is None or kept is None:
            return None
        stage = entry.get("stage", entry.get("name", f"stage {len(rows) + 1}"))
        rows.append({"stage": str(stage), "in": int(count_in), "dropped": int(count_in) - int(kept), "kept": int(kept)})
    return pd.DataFrame(rows)


def _plot(stages: pd.DataFrame, drops: pd.DataFrame | None) -> Figure:
    top_rules = drops.head(15) if drops is not None else None
    height = bounded(0.4 * max(len(stages), 0 if top_rules is None else len(top_rules)) + 1.5, 3, 8)
    figure = new_figure(12 if top_rules is not None else 7, height)
    axes = figure.add_subplot(1, 2 if top_rules is not None else 1, 1)
    labels = list(stages["stage"])
    axes.barh(labels, stages["in"], color="#cccccc", label="in")
    axes.barh(labels, stages["kept"], color="#2b7bba", label="kept")
    axes.invert_yaxis()
    axes.set_xlabel("records")
    axes.set_title("records in and kept per stage")
    axes.legend(fontsize=7)
    if top_rules is not None:
        rules = figure.add_subplot(1, 2, 2)
        rules.barh([f"{s}/{r}" for s, r in zip(top_rules["stage"], top_rules["rule"])], top_rules["dropped"], color="#c0392b")
        rules.invert_yaxis()
        rules.tick_params(axis="y", labelsize=6)
        rules.set_xlabel("records dropped")
        rules.set_title("drops per rule (top 15)")
    return figure
