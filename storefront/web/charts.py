"""Bar charts as inline SVG, drawn on the server: no script, no outside library."""

from __future__ import annotations

from html import escape


def bar_chart(points: list[tuple[str, float]], *, title: str, unit: str = "",
              width: int = 640, height: int = 180) -> str:
    """An accessible SVG bar chart of (label, value) points, oldest first."""
    if not points:
        return f'<p class="muted">{escape(title)}: nothing yet.</p>'
    top = max(v for _, v in points) or 1.0
    pad, base = 28, height - 24
    step = (width - pad) / len(points)
    bar = max(step * 0.7, 2)
    parts = [f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
             f'<text x="0" y="12" class="axis">{escape(_fmt(top))}{escape(unit)}</text>',
             f'<line x1="{pad}" y1="{base}" x2="{width}" y2="{base}" class="axis"/>']
    for i, (label, value) in enumerate(points):
        h = (base - 18) * value / top
        x = pad + i * step
        parts.append(
            f'<rect x="{x:.1f}" y="{base - h:.1f}" width="{bar:.1f}" height="{h:.1f}">'
            f'<title>{escape(label)}: {escape(_fmt(value))}{escape(unit)}</title></rect>')
        if len(points) <= 10 or i in (0, len(points) - 1):
            parts.append(f'<text x="{x:.1f}" y="{height - 6}" class="axis">'
                         f'{escape(label[5:])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _fmt(v: float) -> str:
    return f"{v:.0f}" if float(v).is_integer() else f"{v:.4g}"
