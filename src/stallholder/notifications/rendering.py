"""Rendering emails from their templates: pure, no I/O beyond reading the templates.

Every email has a plain-text and an HTML template under ``templates/`` (``<kind>.txt``,
``<kind>.html``) and a one-line subject here. HTML is autoescaped; text is not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from babel.dates import format_date
from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape

from stallholder.kit.money import Money

TEMPLATES_DIR = Path(__file__).parent / "templates"
LOCALE = "en_US"

# The subject of each kind of email; the body is in templates/<kind>.txt and .html.
SUBJECTS: dict[str, str] = {
    "receipt": "Your receipt from {{ merchant }} [{{ number }}]",
    "refund": "{{ merchant }} refunded {{ amount | money(currency) }} [{{ number }}]",
    "payment_failed": "Your payment to {{ merchant }} did not go through",
    "magic_link": "Your sign-in link for {{ merchant }}",
    "sign_in_link": "{{ headline }}",
    "webhook_endpoint_disabled": "Webhook endpoint disabled: {{ url }}",
    "invoice_payment_failed": "Your {{ merchant }} subscription payment did not go through",
    "subscription_reminder": "{{ headline }}",
    "subscription_canceled": "Your {{ merchant }} subscription is canceled",
    "raffle_offer": "You can buy from {{ merchant }}'s {{ drop_name }}",
    "shipped": "Your order from {{ merchant }} is on its way [{{ number }}]",
    "license_keys": "Your license key{% if license_keys|length > 1 %}s{% endif %} from "
    "{{ merchant }} [{{ number }}]",
    "waitlist_offer": "One is back: {{ merchant }}'s {{ drop_name }} is held for you",
    "channel_paused": "Channel paused: {{ channel_name }}",
    "channel_oversold": "Oversold on {{ channel_name }}: {{ quantity }} × {{ sku }}",
}


def format_money(amount: int, currency: str) -> str:
    """``1500, "usd"`` → ``$15.00``, with babel's currency rules."""
    return Money(amount, currency).format(LOCALE)


def format_long_date(day: date) -> str:
    """``March 1, 2026``."""
    return str(format_date(day, format="long", locale=LOCALE))


_environment = Environment(
    loader=FileSystemLoader(TEMPLATES_DIR),
    autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_environment.filters["money"] = format_money
_environment.filters["long_date"] = format_long_date


_subjects: dict[str, Template] = {}


def _subject_template(kind: str) -> Template:
    """The subject's template, compiled once (compiling costs more than rendering)."""
    template = _subjects.get(kind)
    if template is None:
        template = _subjects[kind] = _environment.from_string(SUBJECTS[kind])
    return template


@dataclass(frozen=True, slots=True)
class Rendered:
    subject: str
    text: str
    html: str


def render(kind: str, context: Mapping[str, Any]) -> Rendered:
    """The subject, text and HTML of one email.

    Raises:
        KeyError: ``kind`` has no template.
        jinja2.UndefinedError: the context lacks a value the template uses.
    """
    subject_template = _subject_template(kind)
    # A subject is one header line, whatever a merchant name or URL contains.
    subject = " ".join(subject_template.render(context).split())
    return Rendered(
        subject=subject,
        text=_environment.get_template(f"{kind}.txt").render(context),
        html=_environment.get_template(f"{kind}.html").render(context),
    )
