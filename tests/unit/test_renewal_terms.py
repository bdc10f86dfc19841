"""The renewal terms a subscription-mode checkout session shows, in plain words."""

from __future__ import annotations

from datetime import UTC, date, datetime

from stallholder.checkout.service import FirstCharge, renewal_terms

NOW = datetime(2028, 2, 28, 23, 30, tzinfo=UTC)
CANCEL = (
    "renewing automatically until you cancel. Cancel any time before a renewal and you are "
    "not charged again; the subscription then ends at the end of the period you have paid for."
)


def test_charged_today() -> None:
    assert renewal_terms(amount=300, currency="usd", plan=("month", 1), trial_days=0, now=NOW) == (
        f"$3.00 every month, first charged today (28 February 2028), {CANCEL}"
    )


def test_every_few_intervals_in_another_currency() -> None:
    assert renewal_terms(
        amount=4500, currency="eur", plan=("week", 3), trial_days=0, now=NOW
    ).startswith("€45.00 every 3 weeks, first charged today (28 February 2028), ")


def test_a_trial_moves_the_first_charge_across_a_leap_day() -> None:
    assert renewal_terms(amount=1200, currency="usd", plan=("year", 1), trial_days=1, now=NOW) == (
        f"Free for 1 day; then $12.00 every year, first charged on 29 February 2028, {CANCEL}"
    )


def test_the_billing_day_promises_a_prorated_first_charge_and_its_date() -> None:
    first = FirstCharge(anchor=datetime(2028, 3, 1, tzinfo=UTC), day=date(2028, 3, 1), amount=10)
    assert renewal_terms(
        amount=300, currency="usd", plan=("month", 1), trial_days=0, now=NOW, first_charge=first
    ) == (
        "At most $0.10 today for the time until 1 March 2028 (prorated to the second from when "
        f"you subscribe); then $3.00 every month, first charged on 1 March 2028, {CANCEL}"
    )
