"""The Jinja environment shared by every page module."""

from __future__ import annotations

from pathlib import Path

from fastapi.templating import Jinja2Templates

from stallholder.kit.money import Money, exponent
from stallholder.web.security import csrf_field

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=HERE / "templates")


def format_money(amount: int, currency: str) -> str:
    return Money(amount, currency).format()


templates.env.filters["money"] = format_money
# Digits after the decimal point of a currency (2 for usd, 0 for jpy): what a page's script
# needs to turn a typed amount into minor units.
templates.env.filters["exponent"] = exponent
templates.env.globals["csrf_field"] = csrf_field
