"""The dashboard's pure pieces: the inline SVG bar chart and typed amounts."""

from __future__ import annotations

import re

import pytest

from stallholder.kit.money import parse_major
from stallholder.web.charts import HEIGHT, bar_chart


def test_bars_scale_to_the_largest_value_and_describe_themselves() -> None:
    svg = str(
        bar_chart(
            [("Jan", 100), ("Feb", 50), ("Mar", 0), ("Apr", -20)],
            title="Revenue <usd>",
            describe=lambda value: f"${value / 100:.2f}",
        )
    )
    heights = [int(h) for h in re.findall(r'height="(\d+)"', svg)]
    plot = HEIGHT - 12 - 28
    assert heights == [plot, plot // 2, 0, 0]
    assert "<title>Revenue &lt;usd&gt;</title>" in svg
    assert "<desc>Jan $1.00, Feb $0.50, Mar $0.00, Apr $-0.20</desc>" in svg
    assert "<title>Feb: $0.50</title>" in svg
    assert 'role="img"' in svg
    assert "<script" not in svg


def test_an_empty_or_all_zero_chart_draws_no_bars() -> None:
    svg = str(bar_chart([("Jan", 0)], title="MRR", describe=str))
    assert re.findall(r'height="(\d+)"', svg) == ["0"]
    assert str(bar_chart([], title="MRR", describe=str)).count("<rect") == 0


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("5", "usd", 500),
        ("5.00", "usd", 500),
        (" 1,250.5 ", "usd", 125050),
        ("500", "jpy", 500),
        ("1.234", "kwd", 1234),
        ("0", "usd", 0),
    ],
)
def test_typed_amounts_in_minor_units(text: str, currency: str, minor: int) -> None:
    assert parse_major(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency", "message"),
    [
        ("5.001", "usd", "'5.001' has more decimals than USD has (2)"),
        ("5.5", "jpy", "'5.5' has more decimals than JPY has (0)"),
        ("five", "usd", "'five' is not an amount"),
        ("NaN", "usd", "'NaN' is not an amount"),
        ("", "usd", "'' is not an amount"),
    ],
)
def test_amounts_that_are_not_refused_with_what_to_type(
    text: str, currency: str, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_major(text, currency)
