"""Inline SVG charts, drawn on the server (no JavaScript chart library)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from markupsafe import Markup, escape

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")


def _svg(width: int, height: int, body: list[str], label: str) -> Markup:
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-label="{escape(label)}">' + "".join(body) + "</svg>")


def _slot(b: dict[str, Any], start: float, bucket: float, slots: int) -> int:
    t = _t(b["bucket"])
    return min(max(int(round(((t or start) - start) / bucket)), 0), slots - 1)


def throughput(buckets: list[dict[str, Any]], start: float, bucket: float,
               slots: int) -> Markup:
    """Stacked bars per bucket of the window: succeeded, failed (and dead),
    cancelled; ``slots`` buckets of ``bucket`` seconds from ``start``."""
    w, h = 600, 120
    if not buckets:
        return _svg(w, h, ['<text x="10" y="60" class="empty">no workflow ended in this '
                           'window</text>'], "throughput")
    peak = max(b["succeeded"] + b["failed"] + b["cancelled"] for b in buckets) or 1
    bw = w / slots
    body = []
    for b in buckets:
        i = _slot(b, start, bucket, slots)
        y = float(h)
        for key, color in (("succeeded", "#59a14f"), ("failed", "#e15759"),
                           ("cancelled", "#bab0ac")):
            bh = h * b[key] / peak
            if bh:
                y -= bh
                body.append(
                    f'<rect x="{i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" '
                    f'height="{bh:.1f}" fill="{color}"><title>{escape(str(b["bucket"]))}: '
                    f'{b[key]} {key}</title></rect>')
    body.append(f'<text x="4" y="12" class="axis">{peak}</text>')
    return _svg(w, h, body, "throughput")


def failure_rate(buckets: list[dict[str, Any]], start: float, bucket: float,
                 slots: int) -> Markup:
    """Failed share of ended workflows per bucket, as a line with points (0-100%)."""
    w, h = 600, 80
    points = []
    bw = w / slots
    dots = []
    for b in buckets:
        i = _slot(b, start, bucket, slots)
        ended = b["succeeded"] + b["failed"] + b["cancelled"]
        rate = b["failed"] / ended if ended else 0.0
        x, y = i * bw + bw / 2, h - rate * (h - 4)
        points.append(f"{x:.1f},{y:.1f}")
        dots.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="#e15759">'
                    f'<title>{rate:.0%} failed of {ended}</title></circle>')
    body = [f'<line x1="0" y1="{h}" x2="{w}" y2="{h}" class="axis"/>',
            '<text x="4" y="12" class="axis">100%</text>']
    if points:
        body.append(f'<polyline fill="none" stroke="#e15759" stroke-width="2" '
                    f'points="{" ".join(points)}"/>')
        body += dots
    return _svg(w, h, body, "failure rate")


def _t(value: Any) -> float | None:
    if not isinstance(value, datetime) or value.year > 9000:
        return None
    return value.timestamp()


def timeline(wf: dict[str, Any], steps: list[dict[str, Any]],
             runs: list[dict[str, Any]] | None) -> Markup:
    """The step timeline: one bar per step from the previous checkpoint to its
    own (Ratchet records when a step ended, not when it began), coloured by
    run; a run lane on top when the runs table exists; errors outlined red."""
    origin = _t(wf.get("started_at")) or _t(wf.get("created_at")) or 0.0
    end_candidates = [_t(s["recorded_at"]) for s in steps] + [
        _t(wf.get("ended_at")), _t(wf.get("updated_at"))]
    if runs:
        end_candidates += [_t(r.get("ended_at")) for r in runs]
    end = max([e for e in end_candidates if e is not None] + [origin + 0.001])
    span = max(end - origin, 0.001)
    label_w, w, row_h = 160, 760, 22
    run_rows = len(runs) if runs else 0
    h = (len(steps) + run_rows) * row_h + 24
    run_color: dict[Any, str] = {}

    def color(run_id: Any) -> str:
        if run_id not in run_color:
            run_color[run_id] = PALETTE[len(run_color) % len(PALETTE)]
        return run_color[run_id]

    def x(t: float) -> float:
        return label_w + (t - origin) / span * (w - label_w - 10)

    body: list[str] = []
    row = 0
    for r in runs or []:
        start = _t(r.get("started_at")) or origin
        stop = _t(r.get("ended_at")) or end
        who = r.get("worker_id") or "?"
        y = row * row_h + 4
        body.append(f'<text x="4" y="{y + 14}" class="label">run {escape(str(r.get("run_id")))}'
                    f' · {escape(str(who))[:18]}</text>')
        body.append(f'<rect class="run" x="{x(start):.1f}" y="{y}" '
                    f'width="{max(x(stop) - x(start), 2):.1f}" height="{row_h - 6}" '
                    f'fill="{color(r.get("run_id"))}" opacity="0.5"><title>run '
                    f'{escape(str(r.get("run_id")))} on {escape(str(who))}: '
                    f'{escape(str(r.get("outcome", r.get("status", ""))))}</title></rect>')
        row += 1
    previous = origin
    for s in steps:
        t = _t(s["recorded_at"]) or previous
        start = min(previous, t)
        y = row * row_h + 4
        failed = s.get("error") is not None
        seconds = t - start
        stroke = ' stroke="#e15759" stroke-width="2"' if failed else ""
        body.append(f'<text x="4" y="{y + 14}" class="label">{s["step_id"]} '
                    f'{escape(str(s["name"]))[:20]}</text>')
        body.append(
            f'<rect class="step{" failed" if failed else ""}" data-step="{s["step_id"]}" '
            f'x="{x(start):.1f}" y="{y}" width="{max(x(t) - x(start), 2):.1f}" '
            f'height="{row_h - 6}" fill="{color(s.get("run_id"))}"'
            f'{stroke}>'
            f'<title>step {s["step_id"]} {escape(str(s["name"]))}: {seconds:.3f}s, run '
            f'{escape(str(s.get("run_id")))}{", error" if failed else ""}</title></rect>')
        previous = t
        row += 1
    wait_t = _t(wf.get("start_at"))
    if wf.get("status") == "enqueued" and wait_t is not None and wait_t > end:
        body.append(f'<text x="{label_w}" y="{h - 6}" class="axis">waiting until '
                    f'{datetime.fromtimestamp(wait_t, timezone.utc):%Y-%m-%d %H:%M:%S}</text>')
    body.append(f'<text x="{w - 80}" y="{h - 6}" class="axis">{span:.2f}s</text>')
    if not steps and not runs:
        body.append('<text x="10" y="16" class="empty">no step recorded yet</text>')
        h = max(h, 30)
    return _svg(w, h, body, "step timeline")
