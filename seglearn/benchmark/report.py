"""results.md: one row per method (per-class IoU, awe full / ROI, fit and predict seconds)."""

from __future__ import annotations

from typing import Sequence


def _f(v, digits=1, scale=1.0):
    return "-" if v is None else f"{v * scale:.{digits}f}"


def markdown_table(results: Sequence[dict], class_names: Sequence[str], *, roi: bool) -> str:
    """A Markdown table, worst full-FOV awe first (as in seed 002, Fig. 1)."""
    ok = [r for r in results if "error" not in r]
    ok = sorted(ok, key=lambda r: -r["full"]["awe"])
    head = ["method"] + [f"IoU {c}" for c in class_names] + ["awe full %"] + (["awe ROI %"] if roi else []) + \
        ["fit s", "predict s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ok:
        row = [r["method"]] + [_f(v, 3) for v in r["full"]["iou"]] + [_f(r["full"]["awe"], 1)]
        if roi:
            row.append(_f(r["roi"]["awe"], 1) if r.get("roi") else "-")
        row += [_f(r["fit_s"], 1), _f(r["predict_s"], 1)]
        lines.append("| " + " | ".join(row) + " |")
    for r in results:
        if "error" in r:
            lines.append(f"| {r['method']} | failed: {r['error']} |")
    return "\n".join(lines) + "\n"
