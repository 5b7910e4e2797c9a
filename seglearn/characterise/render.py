"""The small pieces the report's HTML and PNG writers share: a matplotlib figure as PNG bytes, a
value and a table as HTML (:mod:`.report`, :mod:`.plots`, :mod:`.intervals_report`)."""

from __future__ import annotations

import html
import io
import math
from typing import Any


def fig_png(fig) -> bytes:
    """PNG bytes (100 dpi) of a matplotlib figure, which is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def fmt(v: Any) -> str:
    """A table cell: 4 significant digits, yes / no, "–" for missing and not finite values."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "–"
        return f"{v:.4g}"
    return html.escape(str(v))


def table(rows: list[dict], cols: list[str] | None = None, limit: int = 60) -> str:
    """An HTML table of ``rows`` (columns ``cols``, default the first row's keys), at most ``limit`` rows."""
    if not rows:
        return "<p>–</p>"
    cols = cols or list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p class=note>{len(rows) - limit} more rows in the CSV.</p>" if len(rows) > limit else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"
