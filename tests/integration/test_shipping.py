"""Shipping through the services on SQLite and PostgreSQL: the quote reads only active
rates and breaks ties by age; a confirmed session's order and ledger carry the shipping
line exactly; a refusal leaves the session as it was."""

from __future__ import annotations

from datetime import timedelta

import pytest

from stallholder.catalog import service as catalog
from stallholder.checkout import service as checkout
from stallholder.fulfilment import service as fulfilment
from stallholder.fulfilment.addresses import InvalidShippingAddress, ShippingAddress
from stallholder.fulfilment.rates import Quote, WeightBand
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.ledger.fees import FeeSchedule
from stallholder.orders import service as orders
from stallholder.payments.gateway import SandboxGateway
from tests import factories
from tests.conftest import T0

pytestmark = pytest.mark.anyio

PARIS = ShippingAddress(
    name="Zoé", line1="1 rue de Rivoli", city="Paris", postal_code="75001", country="FR"
)


@pytest.fixture
def database_url(any_database_url: str) -> str:
    return any_database_url


def _flat(name: str, amount: int, countries: list[str] | None) -> fulfilment.RateSpec:
    return fulfilment.RateSpec(
        display_name=name,
        countries=countries,
        currency="eur",
        type="flat",
        amount=amount,
        weight_bands=None,
        free_shipping_threshold=None,
    )


async def test_the_quote_uses_active_rates_and_the_oldest_on_a_tie(database: Database) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        assert not await fulfilment.creator_ships(session, creator_id=creator.id)
        first = await fulfilment.create_rate(
            session, creator_id=creator.id, spec=_flat("Colissimo", 790, ["FR", "BE"]), now=T0
        )
        await fulfilment.create_rate(
            session,
            creator_id=creator.id,
            spec=_flat("La Poste", 790, ["FR"]),
            now=T0 + timedelta(seconds=1),
        )
        cheaper = await fulfilment.create_rate(
            session,
            creator_id=creator.id,
            spec=fulfilment.RateSpec(
                display_name="Lettre suivie",
                countries=["fr"],
                currency="eur",
                type="by_weight",
                amount=None,
                weight_bands=[WeightBand(up_to_grams=250, amount=450)],
                free_shipping_threshold=None,
            ),
            now=T0 + timedelta(seconds=2),
        )
        assert await fulfilment.creator_ships(session, creator_id=creator.id)

    async def quote(weight: int) -> Quote:
        async with database.unit_of_work() as session:
            return await fulfilment.quote(
                session,
                creator_id=creator.id,
                country="FR",
                currency="eur",
                subtotal=3000,
                weight_grams=weight,
            )

    assert await quote(200) == Quote(cheaper.id, "Lettre suivie", 450)
    assert await quote(300) == Quote(first.id, "Colissimo", 790)
    async with database.unit_of_work() as session:
        await fulfilment.update_rate(
            session, creator_id=creator.id, rate_id=first.id, is_active=False, now=T0
        )
    assert (await quote(300)).display_name == "La Poste"
    async with database.unit_of_work() as session:
        with pytest.raises(fulfilment.ShippingUnavailable):
            await fulfilment.quote(
                session,
                creator_id=creator.id,
                country="DE",
                currency="eur",
                subtotal=3000,
                weight_grams=1,
            )


async def test_a_shipped_sale_records_the_address_the_line_and_exact_ledger(
    database: Database,
) -> None:
    async with database.unit_of_work() as session:
        creator = await factories.create_creator(session, now=T0)
        await fulfilment.create_rate(
            session, creator_id=creator.id, spec=_flat("Europe", 1250, ["FR", "DE"]), now=T0
        )
        product = await catalog.create_product(
            session,
            creator_id=creator.id,
            kind="physical",
            name="Vase",
            description="",
            status="published",
            variants=[catalog.VariantSpec(sku="VASE", weight_grams=1200)],
            now=T0,
        )
        price = await catalog.create_price(
            session,
            creator_id=creator.id,
            product_id=product.id,
            now=T0,
            spec=catalog.PriceSpec(currency="eur", unit_amount=6000),
        )
        opened = await factories.create_session(
            session, creator_id=creator.id, price_id=price.id, now=T0
        )
        assert (opened.requires_shipping, opened.shipping_weight_grams) == (True, 1200)

    # A bad address at confirm changes nothing on the session.
    with pytest.raises(InvalidShippingAddress):
        await checkout.confirm_session(
            database,
            SandboxGateway(),
            creator_id=creator.id,
            session_id=opened.id,
            payment_method="tok_visa",
            client_secret=None,
            customer_email=None,
            default_fees=FeeSchedule(bps=500),
            base_url="http://testserver",
            resolve_after=T0 + timedelta(minutes=2),
            now=T0,
            shipping_address=ShippingAddress(name="Zoé", line1="x", city="Paris", country="FR"),
        )
    async with database.unit_of_work() as session:
        still = await checkout.get_session(session, creator_id=creator.id, session_id=opened.id)
        assert (still.shipping_address, still.amount_total, still.payment_status) == (
            None,
            6000,
            "unpaid",
        )

    outcome = await checkout.confirm_session(
        database,
        SandboxGateway(),
        creator_id=creator.id,
        session_id=opened.id,
        payment_method="tok_visa",
        client_secret=None,
        customer_email=None,
        default_fees=FeeSchedule(bps=500),
        base_url="http://testserver",
        resolve_after=T0 + timedelta(minutes=2),
        now=T0,
        shipping_address=PARIS,
    )
    assert outcome.error is None
    assert outcome.session.order_id is not None
    async with database.unit_of_work() as session:
        order = await orders.get_order(
            session, creator_id=creator.id, order_id=outcome.session.order_id
        )
        assert (order.amount_subtotal, order.amount_shipping, order.amount_total) == (
            6000,
            1250,
            7250,
        )
        assert order.shipping_address == {**PARIS.as_dict(), "country": "FR"}
        assert order.shipping_rate_name == "Europe"
        # Sandbox EUR: 2.9% of 7250 = 210.25 → 210, + 25 fixed = 235; platform 5% = 362.5 → 363.
        assert (order.processor_fee, order.platform_fee) == (235, 363)
        balances = await ledger.balances_of(session, account=ledger.creator_account(creator.id))
        assert balances == {"eur": 7250 - 235 - 363}
        assert (await ledger.verify(session)).is_clean
