"""Every table that holds a creator's data carries ``creator_id``, the distribution key for
sharding PostgreSQL by creator (Citus). A new table needs that column or an entry below,
with the reason it is platform-wide."""

from __future__ import annotations

from stallholder.tables import metadata

# Tables that belong to the platform rather than to one creator, and why. Add a new table
# here only when no single creator owns its rows; a creator's data gets a creator_id.
PLATFORM_WIDE = {
    # The ledger's running sums, one row per (account, currency). Creator accounts spell
    # the creator in the key ("creator:<id>:balance"); the platform's own accounts
    # (platform:fees, processor:fees, external:buyer_funds) belong to no creator.
    "balances": "platform and creator accounts, keyed by account name",
    # Events a payment provider sent; which creator one concerns is known only once it is
    # handled (a Stripe event names a PaymentIntent, not a creator).
    "inbox_events": "provider events before they are matched to a creator",
    # Stored responses keyed by a hash of the caller's Authorization header, written by
    # middleware before the request is routed (the admin key has no creator).
    "idempotency_keys": "scoped by the caller's credentials, not by creator",
    # One person across creators (ADR 0011): each creator's customers link to it, and no
    # creator owns it or reads it directly.
    "buyers": "one row per person on the platform, shared by the creators they buy from",
    # A buyer's prepaid balance per currency: the platform holds it for the buyer and any
    # creator the buyer supports is paid from it.
    "wallets": "the buyer's money held by the platform, spent with any creator",
    # One card charge for a buyer's invoices across creators (ADR 0019); each creator's
    # share is a consolidated_charge_parts row, which carries creator_id.
    "consolidated_charges": "the buyer's charge across creators, split in its parts",
    # Rate-limit counters per client IP and per buyer (ADR 0018): one address or person
    # buys from any creator, and the limit is the platform's, not a creator's.
    "rate_limit_counters": "hits per client IP and per buyer, across creators",
    # How far the sweep for changed stock has looked (ADR 0026): one row for every
    # creator's channels.
    "channel_sweep_marks": "the channel sweep's watermark, one row for the platform",
    # The creators themselves: their id is the distribution key.
    "creators": "one row per creator; its id is the key",
}


def test_every_table_has_creator_id_or_is_listed_as_platform_wide() -> None:
    missing = sorted(
        name
        for name, table in metadata.tables.items()
        if "creator_id" not in table.columns and name not in PLATFORM_WIDE
    )
    assert missing == [], (
        f"{missing} hold no creator_id: add one (filled by the code that inserts) or list "
        "the table in PLATFORM_WIDE with the reason"
    )


def test_the_platform_wide_list_names_only_real_tables_without_creator_id() -> None:
    stale = sorted(
        name
        for name in PLATFORM_WIDE
        if name not in metadata.tables or "creator_id" in metadata.tables[name].columns
    )
    assert stale == []
