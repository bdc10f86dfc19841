"""Checkout sessions: open → complete | expired, and checkout links that open them.

Confirming is safe to repeat and to race, and never holds a transaction or a lock while
the gateway is called (ADR 0007). It runs in three steps:

1. ``begin_confirm`` (short transaction, session row locked): validate and record the
   payment attempt as ``processing``. A confirm that finds an attempt ``processing`` is
   a 409 ``payment-in-progress``; one that finds the session complete returns it.
2. ``payments.call_gateway`` with no transaction open.
3. ``finish_confirm`` (short transaction, session row locked again): record the
   outcome, and on success complete the sale (order, ledger, events). Only the caller
   whose conditional update records the outcome completes it, so the sale happens once
   whether the buyer's request, a second confirm or the worker gets there first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Protocol

from sqlalchemy import Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased, joinedload

from stallholder.accounts import service as accounts
from stallholder.accounts.models import Creator, TestClock
from stallholder.catalog.models import Price, Product, Variant
from stallholder.checkout.models import CheckoutLineItem, CheckoutLink, CheckoutSession
from stallholder.checkout.schemas import present_session
from stallholder.digital import delivery as digital
from stallholder.events import service as events
from stallholder.fulfilment import service as fulfilment
from stallholder.fulfilment.addresses import ShippingAddress, validate_address
from stallholder.inventory import drops, reservations
from stallholder.kit.db import Database, session_or_unit_of_work
from stallholder.kit.errors import (
    Conflict,
    DomainError,
    InvalidRequest,
    NotFound,
    ValidationFailed,
)
from stallholder.kit.flush import flush_together, flush_together_at_commit
from stallholder.kit.ids import new_id, new_secret
from stallholder.kit.money import Money
from stallholder.ledger.fees import FeeSchedule, fees_before_charge
from stallholder.orders import service as orders
from stallholder.payments import service as payments
from stallholder.payments.gateway import ChargeResult, Gateway
from stallholder.payments.models import ConnectedAccount, PaymentAttempt
from stallholder.payments.schemas import attempt_payload

MAX_SESSION_TOTAL = 99_999_999
# The sweep that expires open sessions past their ``expires_at`` (a periodic kind:
# ``tasks.expire_sessions``, ADR 0029).
EXPIRE_KIND = "checkout.expire_sessions"


class SessionNotFound(NotFound):
    slug = "checkout-session-not-found"
    title = "No such checkout session"


class LinkNotFound(NotFound):
    slug = "checkout-link-not-found"
    title = "No such checkout link"


class SessionExpired(Conflict):
    slug = "checkout-session-expired"
    title = "The checkout session has expired"


class PriceNotPurchasable(InvalidRequest):
    slug = "price-not-purchasable"
    title = "A line item's price cannot be bought"


class InvalidLineItem(InvalidRequest):
    slug = "invalid-line-item"
    title = "Invalid line item"


class MixedCurrencies(InvalidRequest):
    slug = "mixed-currencies"
    title = "All line items must share one currency"


class EmailRequired(InvalidRequest):
    slug = "customer-email-required"
    title = "The buyer's email is needed"


class ShippingAddressRequired(ValidationFailed):
    """422, not 409: the remedy is a field of the same request (``shipping_address`` on
    the confirm), not waiting for the session to change."""

    slug = "shipping-address-required"
    title = "The session ships physical items and needs a shipping address"


class ShippingNotRequired(ValidationFailed):
    slug = "shipping-not-required"
    title = "The session has nothing to ship"


class ShippingAddressLocked(Conflict):
    slug = "shipping-address-locked"
    title = "The shipping address cannot change while a payment is waiting"


def _field_error(error: type[ValidationFailed], field: str, message: str) -> ValidationFailed:
    return error(f"{field}: {message}", errors=[{"loc": field, "msg": message, "type": "shipping"}])


@dataclass(frozen=True, slots=True)
class LineRequest:
    price_id: str
    quantity: int
    variant_id: str | None = None
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class ConfirmOutcome:
    """The session after a confirm, and the payment error to report if it failed (or is
    still in progress)."""

    session: CheckoutSession
    error: DomainError | None = None


def _unit_amount(price: Price, line: LineRequest, position: int) -> int:
    if price.type == "pay_what_you_want":
        chosen = line.amount if line.amount is not None else price.preset_amount
        if chosen is None:
            raise InvalidLineItem(
                f"line_items[{position}]: price {price.id} is pay-what-you-want; "
                f"send 'amount' of at least {price.minimum_amount}"
            )
        assert price.minimum_amount is not None
        if chosen < price.minimum_amount or (
            price.maximum_amount is not None and chosen > price.maximum_amount
        ):
            raise InvalidLineItem(
                f"line_items[{position}]: amount {chosen} is outside {price.minimum_amount}–"
                f"{price.maximum_amount if price.maximum_amount is not None else 'no maximum'}",
                minimum=price.minimum_amount,
                maximum=price.maximum_amount,
            )
        return chosen
    if line.amount is not None:
        raise InvalidLineItem(
            f"line_items[{position}]: 'amount' is only for pay-what-you-want "
            f"prices; price {price.id} has a fixed unit_amount"
        )
    assert price.unit_amount is not None
    return price.unit_amount


@dataclass(frozen=True, slots=True)
class _PriceRead:
    price: Price
    product: Product
    # The drop item selling the price (None outside drops) and what it had left.
    drop_item_id: int | None
    drop_left: int | None
    # Whether the product's stock is tracked (a session for it holds units).
    is_tracked: bool


def _price_with_product_statement() -> Select[Price, Product, int, int, bool]:
    drop_item_id, drop_left = drops.item_of_price(Price.id)
    return (
        select(Price, Product, drop_item_id, drop_left, reservations.is_tracked(Product.id))
        .join(Product, Product.id == Price.product_id)
        .where(Price.id == bindparam("price_id"))
        .options(joinedload(Product.variants))
    )


_PRICE_WITH_PRODUCT = _price_with_product_statement()


async def _price_with_product(session: AsyncSession, *, price_id: str) -> _PriceRead | None:
    """The price, its product and the product's variants, with what inventory needs to
    know of them (its drop item, whether its stock is tracked), in one statement."""
    row = (
        (await session.execute(_PRICE_WITH_PRODUCT, {"price_id": price_id})).unique().one_or_none()
    )
    if row is None:
        return None
    return _PriceRead(row[0], row[1], row[2], row[3], bool(row[4]))


@dataclass(frozen=True, slots=True)
class _BuiltLines:
    items: list[CheckoutLineItem]
    currency: str
    # Whether any line is a physical product, and what the physical lines weigh (a variant
    # without a weight counts as 0 g).
    has_physical: bool = False
    weight_grams: int = 0
    # Recurring prices (a subscription-mode session): their (interval, count) and the
    # first price's trial.
    plan: tuple[str, int] | None = None
    trial_days: int = 0
    has_delivery_calendar: bool = False
    # Prices sold in a drop: (drop item, units it had left), by price id.
    drop_items: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Whether any line's stock is tracked.
    is_tracked: bool = False


async def _build_lines(
    session: AsyncSession, *, creator_id: str, lines: Sequence[LineRequest]
) -> _BuiltLines:
    items: list[CheckoutLineItem] = []
    currencies: set[str] = set()
    has_physical, weight_grams = False, 0
    found: dict[str, _PriceRead | None] = {}
    drop_items: dict[str, tuple[int, int]] = {}
    is_tracked = False
    recurring = False
    first_plan: tuple[str, int] | None = None
    trial_days = 0
    has_delivery_calendar = False
    for position, line in enumerate(lines):
        if line.price_id not in found:
            found[line.price_id] = await _price_with_product(session, price_id=line.price_id)
        read = found[line.price_id]
        if read is None or read.price.creator_id != creator_id:
            raise PriceNotPurchasable(f"line_items[{position}]: no price {line.price_id!r}")
        price, product = read.price, read.product
        if read.drop_item_id is not None:
            drop_items[price.id] = (read.drop_item_id, read.drop_left or 0)
        is_tracked = is_tracked or read.is_tracked
        if position == 0:
            recurring = price.type == "recurring"
        elif recurring and line.price_id in {item.price_id for item in items}:
            raise InvalidLineItem(
                f"line_items[{position}]: price {line.price_id} appears twice; a subscription "
                "has each price once, use quantity instead"
            )
        if not price.is_active:
            raise PriceNotPurchasable(f"line_items[{position}]: price {price.id} is archived")
        if product.status != "published":
            raise PriceNotPurchasable(
                f"line_items[{position}]: product {product.id} is {product.status}; "
                "publish it first"
            )
        if recurring != (price.type == "recurring"):
            raise InvalidLineItem(
                f"line_items[{position}]: price {price.id} is "
                f"{'recurring' if price.type == 'recurring' else 'one-time'} and "
                f"line_items[0] is {'recurring' if recurring else 'one-time'}; a session "
                "either subscribes (recurring prices only) or sells once (one-time prices "
                "only)"
            )
        if recurring and first_plan is not None and _plan_of(price) != first_plan:
            raise InvalidLineItem(
                f"line_items[{position}]: price {price.id} bills on another cycle than "
                "line_items[0]; one subscription has one billing cycle"
            )
        if recurring and first_plan is None:
            first_plan = _plan_of(price)
            trial_days = price.trial_days or 0
            has_delivery_calendar = bool(price.delivery_calendar)
        currencies.add(price.currency)
        variant = _pick_variant(product, line.variant_id, position)
        unit_amount = _unit_amount(price, line, position)
        if product.kind == "physical":
            has_physical = True
            weight_grams += (variant.weight_grams or 0) * line.quantity
        items.append(
            CheckoutLineItem(
                creator_id=creator_id,
                position=position,
                price_id=price.id,
                product_id=product.id,
                variant_id=variant.id,
                sku=variant.sku,
                description=product.name
                if variant.is_default and len(product.variants) == 1
                else f"{product.name} — {variant.name}",
                quantity=line.quantity,
                unit_amount=unit_amount,
                amount_total=unit_amount * line.quantity,
            )
        )
    if len(currencies) > 1:
        raise MixedCurrencies(
            f"line items mix currencies {sorted(currencies)}; one session, one currency"
        )
    (currency,) = currencies
    return _BuiltLines(
        items=items,
        currency=currency,
        has_physical=has_physical,
        weight_grams=weight_grams,
        plan=first_plan,
        trial_days=trial_days,
        has_delivery_calendar=has_delivery_calendar,
        drop_items=drop_items,
        is_tracked=is_tracked,
    )


def _plan_of(price: Price) -> tuple[str, int]:
    assert price.recurring_interval is not None
    return price.recurring_interval, price.recurring_interval_count or 1


@dataclass(frozen=True, slots=True)
class FirstCharge:
    """Where the platform billing day puts a subscription begun now (ADR 0020): the first
    full charge at ``anchor`` (``day`` is its local date) and, today, ``amount`` for the
    time until then (prorated)."""

    anchor: datetime
    day: date
    amount: int


class SubscriptionQuoter(Protocol):
    """The port through which a subscription-mode session learns where the platform
    billing day puts its first charges (billing sits above checkout; the app hands
    billing's quoter to the checkout API and pages, as it does ``SubscriptionConfirmer``).
    ``lines`` are (unit amount, quantity); None: the billing day does not apply."""

    def __call__(
        self,
        *,
        plan: tuple[str, int],
        trial_days: int,
        has_delivery_calendar: bool,
        lines: Sequence[tuple[int, int]],
        zone_name: str,
        now: datetime,
    ) -> FirstCharge | None: ...


def renewal_terms(
    *,
    amount: int,
    currency: str,
    plan: tuple[str, int],
    trial_days: int,
    now: datetime,
    first_charge: FirstCharge | None = None,
) -> str:
    """The renewal terms a subscription-mode session shows, in plain words: what is
    charged, how often, when first (after any trial, or the prorated time until the
    platform billing day), and how to cancel. Dates are UTC calendar dates, but the
    billing day's, which is the buyer's local date when the session knows the buyer."""
    interval, count = plan
    price = Money(amount, currency).format()
    every = f"every {interval}" if count == 1 else f"every {count} {interval}s"
    if first_charge is not None:
        until = first_charge.day.strftime("%-d %B %Y")
        today = (
            "nothing today"
            if first_charge.amount == 0
            else f"at most {Money(first_charge.amount, currency).format()} today"
        )
        start = (
            f"{today} for the time until {until} (prorated to the second from when you "
            f"subscribe); then {price} {every}, first charged on {until}"
        )
        start = start[0].upper() + start[1:]
    elif trial_days > 0:
        first = (now + timedelta(days=trial_days)).strftime("%-d %B %Y")
        start = (
            f"Free for {trial_days} day{'s' if trial_days != 1 else ''}; then {price} "
            f"{every}, first charged on {first}"
        )
    else:
        start = f"{price} {every}, first charged today ({now.strftime('%-d %B %Y')})"
    return (
        f"{start}, renewing automatically until you cancel. Cancel any time before a "
        "renewal and you are not charged again; the subscription then ends at the end of "
        "the period you have paid for."
    )


def _pick_variant(product: Product, variant_id: str | None, position: int) -> Variant:
    if variant_id is None:
        return next(v for v in product.variants if v.is_default)
    for variant in product.variants:
        if variant.id == variant_id:
            return variant
    raise InvalidLineItem(
        f"line_items[{position}]: variant {variant_id!r} is not a variant of product {product.id}"
    )


async def create_session(
    session: AsyncSession,
    *,
    creator_id: str,
    lines: Sequence[LineRequest],
    customer_id: str | None,
    customer_email: str | None,
    success_url: str | None,
    cancel_url: str | None,
    ttl: timedelta,
    now: datetime,
    checkout_link_id: str | None = None,
    shipping_address: ShippingAddress | None = None,
    hold: timedelta | None = None,
    holds_at_commit: bool = False,
    quoter: SubscriptionQuoter | None = None,
    admit_to_drop: Callable[[], Awaitable[None]] | None = None,
    write_at_commit: bool = False,
) -> CheckoutSession:
    """An open session for ``lines``, priced now and held for ``ttl``. The units of
    tracked variants are held for the session until it expires, is cancelled or is paid
    (``inventory.reservations``).

    With ``holds_at_commit`` the conditional updates that take the units (of the drop's
    items and the stock levels: the hot rows of a drop) are the unit of work's last
    statements, run at its commit (``kit.db.defer_until_commit``, ADR 0024): their row
    locks are then held for that statement and the commit only. Their ``OutOfStock`` is
    raised by the commit, not by this call; only a caller whose commit turns that error
    into the answer (the HTTP API's) should ask for it.

    ``admit_to_drop`` is awaited once, right after the prices are read, when one is sold
    in a drop (the API counts the request against the drop's rate limits there: a session
    for anything else costs no statement for it); it may raise ``RateLimited``.

    A session for a drop's prices is held for at most the drop's ``reservation_minutes``
    and claims its units of the drop (``inventory.drops``); a waitlist offer passes
    ``hold``, the drop's ``waitlist_hold_minutes``, to be held exactly that long.

    A session with physical items from a creator who ships (has an active shipping rate)
    ``requires_shipping``: it is paid only once it has an address, given here or at
    confirm; the rate for the address is chosen and priced when the address is set.

    A subscription-mode session given the billing day's ``quoter`` (ADR 0020) promises
    the first full charge at the next billing day in the buyer's zone (its customer's, or
    the creator's customer with its email, else the zone a new customer gets) and the
    prorated time until then today; it is held at most until that day starts.

    With ``write_at_commit``, a session that holds nothing and subscribes to nothing is
    written by the unit of work's commit (``kit.flush.flush_together_at_commit``), not
    here: only for a caller whose unit of work runs its final steps (the HTTP API's).

    Raises:
        PriceNotPurchasable, InvalidLineItem, MixedCurrencies, CustomerNotFound, OutOfStock,
        DropNotOpen, DropClosed, DropLimitReached, DropBuyerEmailRequired,
        InvalidShippingAddress, ShippingUnavailable, ShippingNotRequired.
    """
    customer = None
    if customer_id is not None:
        customer = await accounts.get_customer(
            session, creator_id=creator_id, customer_id=customer_id
        )
        customer_email = customer_email or customer.email
    built = await _build_lines(session, creator_id=creator_id, lines=lines)
    items = built.items
    if built.drop_items and admit_to_drop is not None:
        await admit_to_drop()
    # Read only when a price is in a drop (the price read says): one statement fewer for
    # every other sale.
    drop = (
        await drops.drop_for_prices(session, price_ids=list(built.drop_items), now=now)
        if built.drop_items
        else None
    )
    if hold is not None:
        ttl = hold
    elif drop is not None:
        ttl = min(ttl, timedelta(minutes=drop.reservation_minutes))
    total = sum(item.amount_total for item in items)
    if total > MAX_SESSION_TOTAL:
        raise InvalidLineItem(f"the session total {total} exceeds the maximum {MAX_SESSION_TOTAL}")
    subscribing = built.plan is not None
    first_charge = None
    if built.plan is not None and quoter is not None:
        if customer is None and customer_email:
            customer = await accounts.find_customer_for_email(
                session, creator_id=creator_id, email=customer_email
            )
        # The buyer is billed on its own calendar, at its test clock's time if it has one.
        billed_at = now
        if customer is not None and customer.test_clock_id is not None:
            clock = await session.get(TestClock, customer.test_clock_id)
            assert clock is not None, customer.test_clock_id
            billed_at = clock.frozen_time
        first_charge = quoter(
            plan=built.plan,
            trial_days=built.trial_days,
            has_delivery_calendar=built.has_delivery_calendar,
            lines=[(item.unit_amount, item.quantity) for item in items],
            zone_name=accounts.NEW_CUSTOMER_ZONE if customer is None else customer.time_zone,
            now=billed_at,
        )
        if first_charge is not None and billed_at == now:
            # The terms promise this billing day: the session ends before it starts.
            ttl = min(ttl, first_charge.anchor - now)
    # The drop's checks that need no session and no lock (the buyer's limit; a sold-out
    # drop answered from the price read), before anything is written.
    admission = (
        None
        if drop is None or subscribing
        else await drops.admit(
            session,
            drop=drop,
            email=customer_email,
            lines=[
                drops.ClaimLine(
                    price_id=item.price_id,
                    sku=item.sku,
                    quantity=item.quantity,
                    drop_item_id=built.drop_items.get(item.price_id, (None, None))[0],
                    left=built.drop_items.get(item.price_id, (None, None))[1],
                )
                for item in items
            ],
        )
    )
    checkout = CheckoutSession(
        id=new_id("cs"),
        creator_id=creator_id,
        status="open",
        mode="subscription" if subscribing else "payment",
        renewal_terms=None
        if built.plan is None
        else renewal_terms(
            amount=total,
            currency=built.currency,
            plan=built.plan,
            trial_days=built.trial_days,
            now=now,
            first_charge=first_charge,
        ),
        billing_anchor=None if first_charge is None else first_charge.anchor,
        payment_status="unpaid",
        client_secret="",
        customer_id=customer_id,
        customer_email=customer_email,
        currency=built.currency,
        amount_subtotal=total,
        amount_total=total,
        # Each renewal's shipping is the subscription's business (its delivery calendar),
        # not the session's.
        requires_shipping=not subscribing
        and built.has_physical
        and await fulfilment.creator_ships(session, creator_id=creator_id),
        shipping_weight_grams=built.weight_grams,
        amount_shipping=0,
        success_url=success_url,
        cancel_url=cancel_url,
        checkout_link_id=checkout_link_id,
        expires_at=now + ttl,
        created_at=now,
        line_items=items,
        # Whether paying or expiring it may move units (drop claims, stock holds).
        holds_stock=not subscribing and (drop is not None or built.is_tracked),
    )
    if shipping_address is not None:
        await _set_shipping(session, checkout, shipping_address)
    checkout.client_secret = f"{checkout.id}_secret_{new_secret('x')[2:26]}"
    session.add(checkout)
    if write_at_commit and not subscribing and admission is None and not built.is_tracked:
        # Nothing below refers to the rows: the session and its lines are written at the
        # commit, with the request's Idempotency-Key row (one statement on PostgreSQL).
        flush_together_at_commit(session)
        return checkout
    if subscribing:
        # A subscription sells no stock now: nothing to hold, no drop to claim.
        await session.flush()
        return checkout
    if write_at_commit and holds_at_commit:
        # The session, its lines and the claims and reservations below are written by the
        # commit in one statement on PostgreSQL, with the request's Idempotency-Key row,
        # before the hot rows' updates (deferred after this, so run after it).
        flush_together_at_commit(session)
    else:
        await session.flush()
    # Last, so the hot rows stay locked for as short a time as the unit of work allows;
    # the drop's rows before the stock's (the lock order, ADR 0012).
    if admission is not None:
        await drops.claim(
            session,
            admission=admission,
            checkout_session_id=checkout.id,
            now=now,
            at_commit=holds_at_commit,
        )
    if built.is_tracked:
        await reservations.hold(
            session,
            creator_id=checkout.creator_id,
            checkout_session_id=checkout.id,
            wants=[
                reservations.Want(variant_id=item.variant_id, sku=item.sku, quantity=item.quantity)
                for item in checkout.line_items
            ],
            now=now,
            at_commit=holds_at_commit,
        )
    return checkout


async def _set_shipping(
    session: AsyncSession, checkout: CheckoutSession, address: ShippingAddress
) -> None:
    """Check ``address``, choose and price its rate, and put both on the session with the
    new total (nothing changes when any of it fails)."""
    if not checkout.requires_shipping:
        raise _field_error(
            ShippingNotRequired,
            "shipping_address",
            "this session has no physical items to ship (or the seller does not ship); "
            "leave it out",
        )
    normal = validate_address(address)
    quote = await fulfilment.quote(
        session,
        creator_id=checkout.creator_id,
        country=normal.country,
        currency=checkout.currency,
        subtotal=checkout.amount_subtotal,
        weight_grams=checkout.shipping_weight_grams,
    )
    total = checkout.amount_subtotal + quote.amount
    if total > MAX_SESSION_TOTAL:
        raise InvalidLineItem(
            f"the session total {total} with shipping exceeds the maximum {MAX_SESSION_TOTAL}"
        )
    checkout.shipping_address = normal.as_dict()
    checkout.shipping_rate_id = quote.rate_id
    checkout.shipping_rate_name = quote.display_name
    checkout.amount_shipping = quote.amount
    checkout.amount_total = total


async def _release_holds(
    session: AsyncSession, *, checkout: CheckoutSession, now: datetime
) -> None:
    """Give back what the session holds: drop units, then stock (the lock order)."""
    if not checkout.holds_stock:
        return
    await drops.release(session, checkout_session_id=checkout.id, now=now)
    await reservations.release(session, checkout_session_id=checkout.id, now=now)


async def get_session_by_id(session: AsyncSession, *, session_id: str) -> CheckoutSession:
    """A session by id alone, for the hosted checkout page (the id is the buyer's handle)."""
    checkout = await session.get(CheckoutSession, session_id)
    if checkout is None:
        raise SessionNotFound(f"no checkout session {session_id!r}")
    return checkout


async def open_session_for_price(
    session: AsyncSession, *, price_id: str, ttl: timedelta, now: datetime
) -> CheckoutSession:
    """A one-item session for a published one-time price: the store page's Buy button.

    Raises:
        PriceNotPurchasable: no such price, or it cannot be bought.
    """
    price = await session.get(Price, price_id)
    if price is None:
        raise PriceNotPurchasable(f"no price {price_id!r}")
    return await create_session(
        session,
        creator_id=price.creator_id,
        lines=[LineRequest(price_id=price.id, quantity=1)],
        customer_id=None,
        customer_email=None,
        success_url=None,
        cancel_url=None,
        ttl=ttl,
        now=now,
    )


def effective_status(checkout: CheckoutSession, now: datetime) -> str:
    """``expired`` as soon as ``expires_at`` passes, even before the worker sweeps it."""
    if checkout.status == "open" and now >= checkout.expires_at:
        return "expired"
    return checkout.status


def _locking(statement: Select[CheckoutSession]) -> Select[CheckoutSession]:
    """The session row locked (``FOR UPDATE OF checkout_sessions``) with its line items
    read in the same statement, joined, rather than by a second ``SELECT``."""
    return statement.options(joinedload(CheckoutSession.line_items)).with_for_update(
        of=CheckoutSession
    )


# Built once (a statement's construction costs more CPU than its cached compilation);
# each use binds its values.
_SESSION_BY_ID = select(CheckoutSession).where(
    CheckoutSession.id == bindparam("session_id"),
    CheckoutSession.creator_id == bindparam("creator_id"),
)
_SESSION_BY_ID_LOCKED = _locking(_SESSION_BY_ID)
# Step 3's read: with whether any of the session's products has a license key pool, so a
# sale of products without one (nearly all) asks no more (``digital.note_no_key_pools``).
_SESSION_LOCKED = (
    select(
        CheckoutSession,
        digital.any_key_pool(
            select(CheckoutLineItem.product_id)
            .where(CheckoutLineItem.session_id == CheckoutSession.id)
            .correlate(CheckoutSession)
        ),
    )
    .where(CheckoutSession.id == bindparam("session_id"))
    .options(joinedload(CheckoutSession.line_items))
    .with_for_update(of=CheckoutSession)
)


def _confirm_read_statement() -> Select[CheckoutSession, Creator, str, PaymentAttempt]:
    """Step 1's one read: the session locked with its line items (as ``_SESSION_BY_ID_LOCKED``),
    its creator and the creator's account at the gateway (the payee), and the session's
    latest payment attempt, if any (its number is the highest: attempts are numbered 1, 2,
    … per purpose and never deleted)."""
    earlier = aliased(PaymentAttempt)
    latest_number = (
        select(func.max(earlier.attempt_number))
        .where(earlier.purpose == PURPOSE, earlier.purpose_id == CheckoutSession.id)
        .correlate(CheckoutSession)
        .scalar_subquery()
    )
    return (
        select(CheckoutSession, Creator, ConnectedAccount.external_id, PaymentAttempt)
        .join(Creator, Creator.id == CheckoutSession.creator_id)
        .outerjoin(
            ConnectedAccount,
            (ConnectedAccount.creator_id == Creator.id)
            & (ConnectedAccount.gateway == bindparam("gateway")),
        )
        .outerjoin(
            PaymentAttempt,
            (PaymentAttempt.purpose == PURPOSE)
            & (PaymentAttempt.purpose_id == CheckoutSession.id)
            & (PaymentAttempt.attempt_number == latest_number),
        )
        .where(
            CheckoutSession.id == bindparam("session_id"),
            CheckoutSession.creator_id == bindparam("creator_id"),
        )
        .options(joinedload(CheckoutSession.line_items))
        .with_for_update(of=CheckoutSession)
    )


@dataclass(frozen=True, slots=True)
class _ConfirmRead:
    checkout: CheckoutSession
    payee: payments.Payee
    latest: PaymentAttempt | None


async def _read_for_confirm(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    session_id: str,
    client_secret: str | None,
) -> _ConfirmRead:
    """``get_session(for_update=True)`` with the payee and the latest attempt, in one
    statement.

    Raises:
        SessionNotFound.
    """
    row = (
        (
            await session.execute(
                _CONFIRM_READ,
                {"session_id": session_id, "creator_id": creator_id, "gateway": gateway.name},
            )
        )
        .unique()
        .one_or_none()
    )
    if row is None or (client_secret is not None and client_secret != row[0].client_secret):
        raise SessionNotFound(f"no checkout session {session_id!r}")
    checkout, creator, account, latest = row
    return _ConfirmRead(
        checkout, payments.Payee(creator=creator, connected_account=account), latest
    )


async def get_session(
    session: AsyncSession,
    *,
    creator_id: str,
    session_id: str,
    client_secret: str | None = None,
    for_update: bool = False,
) -> CheckoutSession:
    """Raises ``SessionNotFound`` for another creator's session or a wrong client secret."""
    checkout = (
        (
            await session.execute(
                _SESSION_BY_ID_LOCKED if for_update else _SESSION_BY_ID,
                {"session_id": session_id, "creator_id": creator_id},
            )
        )
        .unique()
        .scalar_one_or_none()
    )
    if checkout is None or (client_secret is not None and client_secret != checkout.client_secret):
        raise SessionNotFound(f"no checkout session {session_id!r}")
    return checkout


async def set_shipping_address(
    session: AsyncSession,
    *,
    creator_id: str,
    session_id: str,
    client_secret: str | None,
    address: ShippingAddress,
    now: datetime,
) -> CheckoutSession:
    """Set or replace an open session's shipping address, so the buyer sees the shipping
    line and the new total before paying.

    Raises:
        SessionNotFound, SessionExpired, PaymentInProgress, ShippingAddressLocked (paid, or
        a charge waits for authentication), InvalidShippingAddress, ShippingUnavailable,
        ShippingNotRequired.
    """
    checkout = await get_session(
        session,
        creator_id=creator_id,
        session_id=session_id,
        client_secret=client_secret,
        for_update=True,
    )
    if checkout.status == "complete":
        raise ShippingAddressLocked(
            f"checkout session {checkout.id} is paid; its shipping address can no longer change"
        )
    latest = await payments.latest_attempt(session, purpose=PURPOSE, purpose_id=checkout.id)
    if latest is not None and latest.status == "processing":
        raise payments.in_progress_error(latest)
    if _is_waiting(latest):
        raise ShippingAddressLocked(
            f"checkout session {checkout.id} has a payment waiting for authentication for "
            "the amount it has; its shipping address cannot change until that is settled"
        )
    if effective_status(checkout, now) == "expired":
        raise _expired(checkout)
    await _set_shipping(session, checkout, address)
    await session.flush()
    return checkout


@dataclass(frozen=True, slots=True)
class PayWhatYouWant:
    """The session's pay-what-you-want item as the buyer's amount field shows it."""

    minimum: int
    maximum: int | None
    chosen: int


async def pay_what_you_want_bounds(
    session: AsyncSession, *, checkout: CheckoutSession
) -> PayWhatYouWant | None:
    """The bounds and current unit amount of the session's (first) pay-what-you-want
    item, or None when every price is fixed."""
    for item in checkout.line_items:
        price = await session.get(Price, item.price_id)
        if price is not None and price.type == "pay_what_you_want":
            assert price.minimum_amount is not None
            return PayWhatYouWant(
                minimum=price.minimum_amount, maximum=price.maximum_amount, chosen=item.unit_amount
            )
    return None


class AmountLocked(Conflict):
    slug = "amount-locked"
    title = "The amount cannot change now"


class NotPayWhatYouWant(ValidationFailed):
    slug = "not-pay-what-you-want"
    title = "The session has no pay-what-you-want item"


async def set_chosen_amount(
    session: AsyncSession,
    *,
    creator_id: str,
    session_id: str,
    client_secret: str | None,
    amount: int,
    now: datetime,
) -> CheckoutSession:
    """The buyer's own unit amount for the session's pay-what-you-want line (the first
    one), checked against the price's minimum and maximum exactly as ``line_items[].amount``
    is when the session is created. The total (and a shipping rate that depends on the
    subtotal) follows.

    Raises:
        SessionNotFound, SessionExpired, PaymentInProgress, AmountLocked (paid, or a charge
        waits for authentication), NotPayWhatYouWant, InvalidLineItem (outside the bounds).
    """
    checkout = await get_session(
        session,
        creator_id=creator_id,
        session_id=session_id,
        client_secret=client_secret,
        for_update=True,
    )
    if checkout.status == "complete":
        raise AmountLocked(f"checkout session {checkout.id} is paid; its amount cannot change")
    latest = await payments.latest_attempt(session, purpose=PURPOSE, purpose_id=checkout.id)
    if latest is not None and latest.status == "processing":
        raise payments.in_progress_error(latest)
    if _is_waiting(latest):
        raise AmountLocked(
            f"checkout session {checkout.id} has a payment waiting for authentication for "
            "the amount it has; the amount cannot change until that is settled"
        )
    if effective_status(checkout, now) == "expired":
        raise _expired(checkout)
    for item in checkout.line_items:
        price = await session.get(Price, item.price_id)
        assert price is not None
        if price.type != "pay_what_you_want":
            continue
        unit_amount = _unit_amount(
            price,
            LineRequest(price_id=price.id, quantity=item.quantity, amount=amount),
            item.position,
        )
        subtotal = checkout.amount_subtotal - item.amount_total + unit_amount * item.quantity
        if subtotal > MAX_SESSION_TOTAL:
            raise InvalidLineItem(
                f"the session total {subtotal} exceeds the maximum {MAX_SESSION_TOTAL}"
            )
        item.unit_amount = unit_amount
        item.amount_total = unit_amount * item.quantity
        checkout.amount_subtotal = subtotal
        checkout.amount_total = subtotal + checkout.amount_shipping
        if checkout.shipping_address is not None:
            # The rate may depend on the subtotal (free shipping over an amount).
            await _set_shipping(session, checkout, ShippingAddress(**checkout.shipping_address))
        await session.flush()
        return checkout
    raise _field_error(
        NotPayWhatYouWant,
        "amount",
        "this session has no pay-what-you-want item; its prices are fixed, leave it out",
    )


def _is_waiting(latest: PaymentAttempt | None) -> bool:
    """A charge at the gateway waits for the buyer to authenticate: its amount is fixed."""
    return (
        latest is not None
        and latest.status == "requires_action"
        and latest.gateway_reference is not None
    )


@dataclass(frozen=True, slots=True)
class ConfirmStart:
    """What step 1 decided: the gateway call to make, or None when there is nothing to
    charge (the session is complete)."""

    session: CheckoutSession
    call: payments.GatewayCall | None


PURPOSE: payments.Purpose = "checkout_session"
_CONFIRM_READ = _confirm_read_statement()


class SubscriptionCheckoutUnavailable(Conflict):
    """A subscription-mode session reached the one-time confirm, which wrote nothing: the
    caller confirms it through ``SubscriptionConfirmer`` instead (the checkout API does, so
    it needs no read of the session's mode before each confirm)."""

    slug = "subscription-checkout-unavailable"
    title = "This session subscribes and is confirmed through the subscription checkout"


class SubscriptionConfirmer(Protocol):
    """The port through which the checkout API confirms a subscription-mode session.

    Billing sits above checkout (it may import checkout, never the reverse), so the use
    case lives in ``billing.checkout`` and the app hands it to the checkout API on
    ``app.state.subscription_confirmer`` (docs/architecture.md, "Subscription checkout").
    """

    async def __call__(
        self,
        database: Database,
        gateway: Gateway,
        *,
        creator_id: str,
        session_id: str,
        payment_method: str,
        client_secret: str | None,
        customer_email: str | None,
        consent: bool,
        ip_address: str | None,
        user_agent: str | None,
        base_url: str,
        now: datetime,
    ) -> ConfirmOutcome: ...


async def complete_subscription(
    session: AsyncSession,
    *,
    checkout: CheckoutSession,
    subscription_id: str,
    paid: bool,
    base_url: str,
    now: datetime,
) -> None:
    """Mark a subscription-mode session ``complete`` with its subscription (``paid``, or
    ``no_payment_required`` when a trial starts) and emit ``checkout.session.completed``.
    The caller holds the session's lock and has checked it is not complete yet."""
    checkout.status = "complete"
    checkout.payment_status = "paid" if paid else "no_payment_required"
    checkout.subscription_id = subscription_id
    checkout.completed_at = now
    _clear_last_error(checkout)
    await session.flush()
    await events.emit(
        session,
        creator_id=checkout.creator_id,
        type="checkout.session.completed",
        now=now,
        data=present_session(checkout, base_url=base_url, status="complete").model_dump(
            mode="json", exclude={"client_secret"}
        ),
    )


async def begin_confirm(
    session: AsyncSession,
    gateway: Gateway,
    *,
    creator_id: str,
    session_id: str,
    payment_method: str,
    client_secret: str | None,
    customer_email: str | None,
    default_fees: FeeSchedule,
    resolve_after: datetime,
    now: datetime,
    shipping_address: ShippingAddress | None = None,
) -> ConfirmStart:
    """Step 1 of a confirm, under the session's lock: validate, then record the attempt as
    ``processing`` (its number and idempotency key are fixed here) and return the gateway
    call to make. A charge waiting for 3-D Secure is re-read instead (the buyer may have
    authenticated in the browser since), and while it waits the new payment method is not
    used, so one session never holds two live charges.

    ``shipping_address`` sets (or replaces) the session's address and shipping line
    before the amount is fixed; a session that ``requires_shipping`` is not charged
    without one.

    Raises:
        SessionNotFound, SessionExpired, EmailRequired, CardNumberRejected,
        InvalidPaymentMethod, CreatorNotConnected, PaymentInProgress,
        ShippingAddressRequired, InvalidShippingAddress, ShippingUnavailable,
        ShippingNotRequired, ShippingAddressLocked.
    """
    payments.check_payment_method(payment_method)
    read = await _read_for_confirm(
        session,
        gateway,
        creator_id=creator_id,
        session_id=session_id,
        client_secret=client_secret,
    )
    checkout, latest = read.checkout, read.latest
    if checkout.status == "complete":
        return ConfirmStart(checkout, None)
    if checkout.mode == "subscription":
        raise SubscriptionCheckoutUnavailable(
            f"checkout session {checkout.id} subscribes (mode 'subscription'); confirm it "
            "through POST /v1/checkout/sessions/{id}/confirm with consent: true"
        )
    if latest is not None and latest.status == "processing":
        raise payments.in_progress_error(latest)
    is_waiting = _is_waiting(latest)
    # A charge waiting for authentication may have succeeded: it completes the sale even
    # past expiry (the buyer has paid), so expiry is judged on its outcome (step 3).
    if not is_waiting and effective_status(checkout, now) == "expired":
        raise _expired(checkout)
    if customer_email is not None and checkout.customer_id is None:
        checkout.customer_email = customer_email
    if not checkout.customer_email:
        raise EmailRequired(
            "this session has no customer; send customer_email with the confirm "
            "so the buyer gets a receipt"
        )
    await _shipping_before_charge(session, checkout, shipping_address, is_waiting=is_waiting)
    if is_waiting:
        assert latest is not None
        await session.flush()
        return ConfirmStart(checkout, payments.gateway_call_for(latest))
    # The fees are fixed before charging: the gateway keeps the platform's side of the
    # charge (Stripe's application_fee_amount) and the order records the same numbers.
    payee = read.payee
    fees = fees_before_charge(
        checkout.amount_total,
        orders.fee_policy_for(payee.creator, default_fees, currency=checkout.currency),
        estimated_processor_fee=gateway.estimate_processor_fee(
            amount=checkout.amount_total, currency=checkout.currency
        ),
    )
    attempt = await payments.begin_attempt(
        session,
        gateway,
        creator_id=creator_id,
        purpose=PURPOSE,
        purpose_id=checkout.id,
        amount=checkout.amount_total,
        currency=checkout.currency,
        payment_method=payment_method,
        platform_fee=fees.platform_fee,
        estimated_processor_fee=fees.estimated_processor_fee,
        resolve_after=resolve_after,
        now=now,
        payee=payee,
        latest_number=0 if latest is None else latest.attempt_number,
        flush=False,
    )
    checkout.payment_status = "processing"
    checkout.payment_action_secret = None
    # The attempt and the session's status in one statement on PostgreSQL (ADR 0030).
    await flush_together(session)
    return ConfirmStart(checkout, payments.gateway_call_for(attempt))


async def _shipping_before_charge(
    session: AsyncSession,
    checkout: CheckoutSession,
    address: ShippingAddress | None,
    *,
    is_waiting: bool,
) -> None:
    """Apply an address sent with the confirm, then insist on one where it is needed. While
    a charge waits for authentication its amount is fixed, so the address may be sent
    again but not changed."""
    if address is not None and is_waiting:
        if validate_address(address).as_dict() != checkout.shipping_address:
            raise ShippingAddressLocked(
                f"checkout session {checkout.id} has a payment waiting for authentication "
                "for the address it has; confirm without shipping_address"
            )
    elif address is not None:
        await _set_shipping(session, checkout, address)
    if checkout.requires_shipping and checkout.shipping_address is None:
        raise _field_error(
            ShippingAddressRequired,
            "shipping_address",
            "required: this session has physical items to ship; send the buyer's address",
        )


def _clear_action_secret(checkout: CheckoutSession) -> None:
    """Forget the buyer's authentication step, touching the row only when there was one.
    Setting a column to the value it has still marks the session changed, and every
    query after that (the rest of the sale's statements) runs the ORM's flush first."""
    if checkout.payment_action_secret is not None:
        checkout.payment_action_secret = None


def _clear_last_error(checkout: CheckoutSession) -> None:
    """Forget the last declined attempt's error, when there was one (as above)."""
    if checkout.last_error_code is not None or checkout.last_error_message is not None:
        checkout.last_error_code, checkout.last_error_message = None, None


def _expired(checkout: CheckoutSession) -> SessionExpired:
    return SessionExpired(
        f"checkout session {checkout.id} expired at "
        f"{checkout.expires_at.isoformat()}; create a new one",
        expired_at=checkout.expires_at.isoformat(),
    )


async def finish_confirm(
    session: AsyncSession,
    *,
    call: payments.GatewayCall,
    result: ChargeResult,
    base_url: str,
    now: datetime,
    write_at_commit: bool = False,
) -> ConfirmOutcome:
    """Step 3 of a confirm, under the session's lock: record the gateway's answer and, when
    it is a success, complete the sale. Idempotent: when the attempt was already recorded
    (by another confirm or the worker) nothing happens again and the session is reported
    as it stands. Used by the worker too, for attempts a crash left ``processing``.

    A failed payment is returned as ``ConfirmOutcome.error`` rather than raised, so the
    attempt and its event commit with the unit of work. With ``write_at_commit`` a
    completed sale's last writes (the session and the events) are left to the unit of
    work's commit (``kit.flush.flush_together_at_commit``).
    """
    checkout, has_key_pool = (
        (await session.execute(_SESSION_LOCKED, {"session_id": call.purpose_id})).unique().one()
    )
    if not has_key_pool:
        digital.note_no_key_pools(
            session, product_ids=[item.product_id for item in checkout.line_items]
        )
    attempt = await payments.record_outcome(session, call=call, result=result)
    if attempt is None:
        return await _outcome_as_it_stands(session, checkout)
    if attempt.status == "requires_action":
        checkout.payment_status = "requires_action"
        checkout.payment_action_secret = attempt.action_secret
        checkout.last_error_code, checkout.last_error_message = None, None
        await session.flush()
        if effective_status(checkout, now) == "expired":
            return ConfirmOutcome(checkout, error=_expired(checkout))
        return ConfirmOutcome(checkout)
    _clear_action_secret(checkout)
    if attempt.status == "failed":
        checkout.payment_status = "unpaid"
        checkout.last_error_code = attempt.decline_code
        checkout.last_error_message = attempt.failure_message
        await session.flush()
        if checkout.status == "expired":
            # It expired while this charge was in flight, keeping its stock for it.
            await _release_holds(session, checkout=checkout, now=now)
        await events.emit(
            session,
            creator_id=checkout.creator_id,
            type="payment.failed",
            now=now,
            data=attempt_payload(attempt),
        )
        return ConfirmOutcome(checkout, error=payments.failure_error(attempt))
    await _complete_sale(
        session,
        checkout=checkout,
        attempt=attempt,
        base_url=base_url,
        now=now,
        write_at_commit=write_at_commit,
    )
    return ConfirmOutcome(checkout)


async def _outcome_as_it_stands(session: AsyncSession, checkout: CheckoutSession) -> ConfirmOutcome:
    if checkout.status == "complete":
        return ConfirmOutcome(checkout)
    latest = await payments.latest_attempt(session, purpose=PURPOSE, purpose_id=checkout.id)
    if latest is not None and latest.status == "processing":
        return ConfirmOutcome(checkout, error=payments.in_progress_error(latest))
    if latest is not None and latest.status == "failed":
        return ConfirmOutcome(checkout, error=payments.failure_error(latest))
    return ConfirmOutcome(checkout)


async def _complete_sale(
    session: AsyncSession,
    *,
    checkout: CheckoutSession,
    attempt: PaymentAttempt,
    base_url: str,
    now: datetime,
    write_at_commit: bool,
) -> None:
    creator_id = checkout.creator_id
    email = checkout.customer_email
    assert email is not None
    # Set on the session with its status below, so the session row is updated once.
    customer_id = checkout.customer_id
    if customer_id is None:
        customer = await accounts.customer_for_email(
            session, creator_id=creator_id, email=email, now=now
        )
        customer_id = customer.id
    order = await orders.create_paid_order(
        session,
        creator_id=creator_id,
        customer_id=customer_id,
        customer_email=email,
        checkout_session_id=checkout.id,
        attempt=attempt,
        now=now,
        lines=[
            orders.LineSpec(
                price_id=item.price_id,
                product_id=item.product_id,
                variant_id=item.variant_id,
                sku=item.sku,
                description=item.description,
                quantity=item.quantity,
                unit_amount=item.unit_amount,
            )
            for item in checkout.line_items
        ],
        shipping=None
        if checkout.shipping_address is None
        else orders.ShippingSpec(
            address=checkout.shipping_address,
            rate_id=checkout.shipping_rate_id,
            rate_name=checkout.shipping_rate_name,
            amount=checkout.amount_shipping,
        ),
        # The posting goes with the last flush too, when that is at the commit.
        post_with_flush=write_at_commit,
    )
    if checkout.shipping_address is not None:
        await accounts.note_country(
            session, customer_id=customer_id, country=checkout.shipping_address.get("country")
        )
    if checkout.holds_stock:
        await drops.sell(session, checkout_session_id=checkout.id, now=now)
        await reservations.allocate(
            session, checkout_session_id=checkout.id, order_id=order.id, now=now
        )
    checkout.customer_id = customer_id
    checkout.status = "complete"
    checkout.payment_status = "paid"
    checkout.order_id = order.id
    checkout.completed_at = now
    _clear_last_error(checkout)
    await events.emit(
        session,
        creator_id=creator_id,
        type="checkout.session.completed",
        now=now,
        # The client secret lets a browser confirm the session; webhook receivers and
        # event readers never need it, so it stays out of the event.
        data=present_session(checkout, base_url=base_url, status="complete").model_dump(
            mode="json", exclude={"client_secret"}
        ),
    )
    # One flush: the session's update and both events (order.paid and this one), in one
    # statement on PostgreSQL (ADR 0030), at the commit when the caller's unit of work
    # writes the request's Idempotency-Key row there too.
    if write_at_commit:
        flush_together_at_commit(session)
    else:
        await flush_together(session)


async def confirm_session(
    database: Database,
    gateway: Gateway,
    *,
    creator_id: str,
    session_id: str,
    payment_method: str,
    client_secret: str | None,
    customer_email: str | None,
    default_fees: FeeSchedule,
    base_url: str,
    resolve_after: datetime,
    now: datetime,
    session: AsyncSession | None = None,
    shipping_address: ShippingAddress | None = None,
) -> ConfirmOutcome:
    """Pay for an open session. Idempotent: a complete session comes back unchanged.

    Step 1 runs in a unit of work of its own, the gateway call with none open, and step 3
    on ``session`` when given (the request's unit of work commits it; touch that session
    only after this returns) or in a unit of work of its own. An attempt still
    ``processing`` after ``resolve_after`` is the worker's to resolve.

    Raises:
        SessionNotFound, SessionExpired, EmailRequired, CardNumberRejected, InvalidPaymentMethod,
        CreatorNotConnected, PaymentInProgress, GatewayUnavailable, and the shipping
        errors of ``begin_confirm``.
    """
    async with database.unit_of_work() as starting:
        start = await begin_confirm(
            starting,
            gateway,
            creator_id=creator_id,
            session_id=session_id,
            payment_method=payment_method,
            client_secret=client_secret,
            customer_email=customer_email,
            default_fees=default_fees,
            resolve_after=resolve_after,
            now=now,
            shipping_address=shipping_address,
        )
    if start.call is None:
        return ConfirmOutcome(start.session)
    result = await payments.call_gateway(gateway, start.call)
    async with session_or_unit_of_work(database, session) as finishing:
        return await finish_confirm(
            finishing,
            call=start.call,
            result=result,
            base_url=base_url,
            now=now,
            # The caller's unit of work commits ``session``: its commit writes them.
            write_at_commit=session is not None,
        )


_EXPIRED_OPEN_SESSIONS = (
    select(CheckoutSession.id)
    .where(
        CheckoutSession.status == "open",
        CheckoutSession.expires_at <= bindparam("now"),
    )
    .order_by(CheckoutSession.expires_at, CheckoutSession.id)
    .limit(bindparam("limit"))
)


async def sessions_to_expire(session: AsyncSession, *, now: datetime, limit: int) -> list[str]:
    """The ids of up to ``limit`` open sessions past their ``expires_at``, the longest
    past first (``ix_checkout_sessions_status_expires`` finds them)."""
    rows = await session.execute(_EXPIRED_OPEN_SESSIONS, {"now": now, "limit": limit})
    return list(rows.scalars())


async def expire_session(
    session: AsyncSession, *, session_id: str, base_url: str, now: datetime
) -> bool:
    """Mark the session ``expired`` if it is still open and past ``expires_at``, give back
    the stock it holds, and emit ``checkout.session.expired``. Returns whether it did; a
    session that completed, is expired already or is not due yet is left alone (so
    running this twice is harmless).

    A session whose charge is at the gateway (``processing``) or waiting for the buyer's
    authentication (``requires_action``) keeps its stock: that charge may still complete
    the sale. Its failure releases it (``finish_confirm``).
    """
    checkout = (
        await session.execute(
            select(CheckoutSession).where(CheckoutSession.id == session_id).with_for_update()
        )
    ).scalar_one_or_none()
    if checkout is None or checkout.status != "open" or now < checkout.expires_at:
        return False
    await _end_session(session, checkout=checkout, base_url=base_url, now=now)
    return True


class SessionNotOpen(Conflict):
    slug = "checkout-session-not-open"
    title = "The checkout session is not open"


async def cancel_session(
    session: AsyncSession, *, creator_id: str, session_id: str, base_url: str, now: datetime
) -> CheckoutSession:
    """Expire an open session now (the buyer left, or the creator withdrew it): its stock
    goes back on sale at once and ``checkout.session.expired`` is emitted.

    Raises:
        SessionNotFound, SessionNotOpen (complete or expired already), PaymentInProgress
        (a charge is at the gateway or waiting for the buyer's authentication).
    """
    checkout = await get_session(
        session, creator_id=creator_id, session_id=session_id, for_update=True
    )
    if effective_status(checkout, now) != "open":
        raise SessionNotOpen(
            f"checkout session {session_id} is {effective_status(checkout, now)}; only an open "
            "session can be expired",
            session_status=effective_status(checkout, now),
        )
    if checkout.payment_status in ("processing", "requires_action"):
        raise payments.PaymentInProgress(
            f"checkout session {session_id} has a payment in progress "
            f"({checkout.payment_status}); it cannot be expired until that payment ends",
            retryable=True,
        )
    await _end_session(session, checkout=checkout, base_url=base_url, now=now)
    return checkout


async def _end_session(
    session: AsyncSession, *, checkout: CheckoutSession, base_url: str, now: datetime
) -> None:
    checkout.status = "expired"
    await session.flush()
    if checkout.payment_status not in ("processing", "requires_action"):
        await _release_holds(session, checkout=checkout, now=now)
    await events.emit(
        session,
        creator_id=checkout.creator_id,
        type="checkout.session.expired",
        now=now,
        data=present_session(checkout, base_url=base_url, status="expired").model_dump(
            mode="json", exclude={"client_secret"}
        ),
    )


async def create_link(
    session: AsyncSession,
    *,
    creator_id: str,
    lines: Sequence[LineRequest],
    success_url: str | None,
    now: datetime,
) -> CheckoutLink:
    """A reusable link; its line items are validated now as a session would validate them."""
    await _build_lines(session, creator_id=creator_id, lines=lines)
    link = CheckoutLink(
        id=new_id("plink"),
        creator_id=creator_id,
        success_url=success_url,
        is_active=True,
        created_at=now,
        line_items=[
            {
                "price": line.price_id,
                "quantity": line.quantity,
                "variant": line.variant_id,
                "amount": line.amount,
            }
            for line in lines
        ],
    )
    session.add(link)
    await session.flush()
    return link


async def get_link(
    session: AsyncSession, *, link_id: str, creator_id: str | None = None
) -> CheckoutLink:
    link = await session.get(CheckoutLink, link_id)
    if link is None or (creator_id is not None and link.creator_id != creator_id):
        raise LinkNotFound(f"no checkout link {link_id!r}")
    return link


async def set_link_active(
    session: AsyncSession, *, link_id: str, creator_id: str, is_active: bool
) -> CheckoutLink:
    link = await get_link(session, link_id=link_id, creator_id=creator_id)
    link.is_active = is_active
    await session.flush()
    return link


async def open_session_from_link(
    session: AsyncSession,
    *,
    link_id: str,
    ttl: timedelta,
    now: datetime,
    quoter: SubscriptionQuoter | None = None,
) -> CheckoutSession:
    """A fresh session for a visit to a checkout link.

    Raises:
        LinkNotFound: no such link, or it was deactivated.
    """
    link = await get_link(session, link_id=link_id)
    if not link.is_active:
        raise LinkNotFound(f"checkout link {link_id!r} is no longer active")
    lines = [
        LineRequest(
            price_id=item["price"],
            quantity=item["quantity"],
            variant_id=item.get("variant"),
            amount=item.get("amount"),
        )
        for item in link.line_items
    ]
    return await create_session(
        session,
        creator_id=link.creator_id,
        lines=lines,
        customer_id=None,
        customer_email=None,
        success_url=link.success_url,
        cancel_url=None,
        ttl=ttl,
        now=now,
        checkout_link_id=link.id,
        quoter=quoter,
    )
