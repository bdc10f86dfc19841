"""The event types Stallholder emits, and the payload version."""

from __future__ import annotations

API_VERSION = "2026-11-01"

EVENT_TYPES: dict[str, str] = {
    "checkout.session.completed": "A checkout session was paid; data.object is the session.",
    "checkout.session.expired": "An open checkout session reached its expires_at unpaid; "
    "data.object is the session.",
    "order.paid": "An order was created from a successful payment; data.object is the order.",
    "refund.created": "An order was refunded in full or in part; data.object is the refund.",
    "order.shipped": "An order's parcel left (every unit of the order); data.object is the "
    "shipment: order, customer_email, carrier, tracking_number, tracking_url, items.",
    "order.license_keys_issued": "License keys owed to an order (its product's key pool "
    "was empty when it was paid) were issued when the creator added keys; data.object: "
    "order, product, keys (the keys issued now), license_keys_missing (how many of the "
    "product it is still owed). The buyer is emailed the keys.",
    "payment.failed": "A payment attempt was declined or failed; data.object is the attempt.",
    "webhook_endpoint.disabled": "A webhook endpoint was disabled after repeated failures; "
    "data.object is the endpoint.",
    "dispute.created": "A buyer disputed an order's payment; data.object is the dispute.",
    "dispute.updated": "A dispute changed status (under review, won, lost…); data.object is "
    "the dispute.",
    "customer.subscription.created": "A subscription was created; data.object is the subscription.",
    "customer.subscription.updated": "A subscription changed (status, period, items, "
    "cancellation…); data.object is the subscription.",
    "customer.subscription.deleted": "A subscription ended (canceled, or its payment failed "
    "for good); data.object is the subscription.",
    "customer.subscription.paused": "A subscription was paused; data.object is the subscription.",
    "customer.subscription.resumed": "A paused subscription was resumed; data.object is the "
    "subscription.",
    "customer.subscription.retention_offer_accepted": "A buyer about to cancel took the "
    "plan's retention offer instead (a discount on the next invoices, or a pause); "
    "data.object is the subscription with its discount and retention_offer.",
    "customer.subscription.trial_will_end": "A trial ends in 3 days (7 for trials over 31 "
    "days); data.object is the subscription.",
    "invoice.created": "A subscription invoice was created; data.object is the invoice.",
    "invoice.paid": "An invoice was paid; data.object is the invoice.",
    "invoice.payment_failed": "A payment of an invoice failed; data.object is the invoice "
    "with its next_payment_attempt.",
    "invoice.upcoming": "A renewal is coming (30 days before a yearly one, once a year for "
    "monthly plans); data.object is the upcoming invoice's amount and date.",
    "drop.opened": "A drop reached its opens_at; data.object is the drop: id, name, mode, "
    "status, opens_at, closes_at, remaining.",
    "drop.sold_out": "A drop's last unit was taken by a checkout session (it is announced "
    "again if expired holds bring units back and it sells out again); data.object is the drop.",
    "drop.updated": "The creator changed a drop (POST /v1/drops/{id}): its name, window, "
    "limits or quantities; data.object is the drop with per_customer_limit and items "
    "(price, quantity).",
    "drop.closed": "A drop reached its closes_at (for a raffle: entries closed, the draw "
    "follows); data.object is the drop.",
    "drop.raffle_offer": "A raffle drop's entrant may buy one unit until expires_at (a winner "
    "of the draw, or the next entrant when a winner did not buy in time); data.object is "
    "the offer: drop, entry, email, rank, expires_at. The entrant is emailed too.",
    "drop.waitlist_offer": "A unit of a sold-out drop came back and is held for the next "
    "buyer on its waitlist until expires_at; data.object is the offer: drop, drop_name, "
    "entry, email, checkout_session, url (the hosted checkout that buys it), expires_at. "
    "The buyer is emailed the link too.",
    "channel.oversold": "An order placed on a channel (Shopify, Etsy, WooCommerce) asked for "
    "units that were no longer free in the stock ledger; data.object is the channel order "
    "line: channel, channel_kind, channel_name, order, order_name, sku, quantity. The order "
    "is kept, flagged oversold, and the creator is emailed.",
    "channel.paused": "A channel stopped being kept in step because it refused our "
    "credentials (revoked, uninstalled); data.object is the channel with paused_reason. The "
    "creator is emailed; reconnect or resume it to sync again.",
    "inventory.low": "A SKU's available stock at a location fell to its low_stock_threshold "
    "or below; data.object is the inventory level.",
    "inventory.out_of_stock": "A SKU's available stock at a location reached 0; data.object "
    "is the inventory level.",
}


def is_event_type(name: str) -> bool:
    return name in EVENT_TYPES
