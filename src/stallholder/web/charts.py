"""Charts as inline SVG, drawn on the server: no script, no CDN, readable by a screen
reader (a title, a description and a text table beside each chart in the page).

Pure: takes the points and returns markup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup

WIDTH = 360
HEIGHT = 180
_TOP = 12
_BOTTOM = 28  # room for the month labels
_LEFT = 4


def bar_chart(
    points: Sequence[tuple[str, int]],
    *,
    title: str,
    describe: Callable[[int], str],
) -> Markup:
    """A bar per point (label, value), scaled to the largest value; negative values draw
    as zero-height bars (net revenue can dip below zero in a month of refunds). It scales
    to its container's width (``viewBox``), so it fits a 375 px phone."""
    highest = max((value for _, value in points), default=0)
    plot_height = HEIGHT - _TOP - _BOTTOM
    slot = (WIDTH - _LEFT) / max(len(points), 1)
    bars = []
    for index, (label, value) in enumerate(points):
        height = 0 if highest <= 0 or value <= 0 else max(1, round(plot_height * value / highest))
        x = _LEFT + index * slot
        bars.append(
            Markup(
                "<g><title>{label}: {text}</title>"
                '<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{h}" rx="2"></rect>'
                '<text x="{cx:.1f}" y="{ty}" text-anchor="middle">{label}</text></g>'
            ).format(
                label=label,
                text=describe(value),
                x=x + slot * 0.15,
                y=_TOP + plot_height - height,
                w=slot * 0.7,
                h=height,
                cx=x + slot / 2,
                ty=HEIGHT - 10,
            )
        )
    summary = ", ".join(f"{label} {describe(value)}" for label, value in points)
    return Markup(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="{title}"><title>{title}</title><desc>{summary}</desc>'
        '<line x1="0" y1="{base}" x2="{w}" y2="{base}"></line>{bars}</svg>'
    ).format(
        w=WIDTH,
        h=HEIGHT,
        title=title,
        summary=summary,
        base=_TOP + plot_height,
        bars=Markup("").join(bars),
    )
