"""The buyer's words for Stripe's error codes are the same on the server's pages
(``checkout_pages.BUYER_DECLINES``) and in the browser (``static/stripe_errors.js``), so a
failed 3-D Secure reads the same whichever side shows it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from stallholder.web import checkout_pages

SCRIPT = Path(checkout_pages.__file__).parent / "static" / "stripe_errors.js"


def _script_words() -> dict[str, str]:
    """``code: "sentence"`` pairs of the script's tables."""
    text = SCRIPT.read_text()
    return {
        code: json.loads(sentence)
        for code, sentence in re.findall(r'^\s+(\w+): ("(?:[^"\\]|\\.)*")', text, re.MULTILINE)
    }


def test_the_server_says_what_the_browser_says_for_each_code() -> None:
    words = _script_words()

    assert checkout_pages.BUYER_DECLINES == {
        "payment_intent_authentication_failure": (
            "Your bank did not confirm this payment. Try again, or use another card."
        )
    }
    for code, sentence in checkout_pages.BUYER_DECLINES.items():
        assert words[code] == sentence


def test_the_script_words_failed_authentication_plainly() -> None:
    words = _script_words()

    assert words["setup_intent_authentication_failure"] == (
        "Your bank did not confirm this card. Try again, or use another card."
    )
    assert words["card_declined"] == "Your card was declined. Try another card."
