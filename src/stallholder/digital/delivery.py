"""What a paid order delivers: license keys issued from the products' pools, and signed,
expiring download links to the products' files with a count per order
(docs/digital-delivery.md).

Keys are issued in the transaction that records the paid order, each by a conditional
update that only takes a key no order line has (``… WHERE order_line_id IS NULL``, with
``FOR UPDATE SKIP LOCKED`` on PostgreSQL so concurrent buyers take different keys rather
than wait for each other; SQLite has one writer). An order is recorded once, so each line
gets its keys once; a key is never issued twice.

A download counts against the order's limit for that file by one conditional update
(``… SET count = count + 1 WHERE count < limit``), never a read and a write.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Exists, Select, bindparam, delete, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.digital import links as signing
from stallholder.digital.models import Download, File, LicenseKey, OwedLicenseKeys, ProductFile
from stallholder.digital.service import FileNotFound, insert_for
from stallholder.events.service import emit
from stallholder.kit.db import transaction_memo
from stallholder.kit.errors import DomainError

# Keys owed to an order were given when keys were added (the buyer is emailed them).
KEYS_ISSUED_EVENT = "order.license_keys_issued"


class DownloadLimitReached(DomainError):
    status = 410
    slug = "download-limit-reached"
    title = "This file has been downloaded as often as the order allows"


@dataclass(frozen=True, slots=True)
class OrderedLine:
    """An order line as digital delivery needs it."""

    line_id: int
    product_id: str
    quantity: int


async def _take_keys(
    session: AsyncSession, *, order_id: str, line: OrderedLine, now: datetime
) -> list[str]:
    """Issue up to ``line.quantity`` unissued keys of its product to the line; returns the
    keys it got, in key order."""
    # A materialized CTE, evaluated once: PostgreSQL may run a ``LIMIT … FOR UPDATE
    # SKIP LOCKED`` subquery in ``WHERE id IN (…)`` more than once and so update more
    # rows than the limit.
    free = (
        select(LicenseKey.id)
        .where(LicenseKey.product_id == line.product_id, LicenseKey.order_line_id.is_(None))
        .order_by(LicenseKey.id)
        .limit(line.quantity)
        .with_for_update(skip_locked=True)
        .cte("free_keys")
        .prefix_with("MATERIALIZED", dialect="postgresql")
    )
    sync = session.sync_session
    if any(isinstance(row, LicenseKey) for row in (*sync.new, *sync.dirty, *sync.deleted)):
        await session.flush()  # keys added in this transaction are in the pool
    # Nothing else the session has yet to write bears on the pool: it is left to the
    # caller's flush (a charge batch writes its outcomes' rows in one statement).
    with sync.no_autoflush:
        taken = await session.execute(
            update(LicenseKey)
            .where(LicenseKey.id.in_(select(free.c.id)), LicenseKey.order_line_id.is_(None))
            .values(order_id=order_id, order_line_id=line.line_id, issued_at=now)
            .returning(LicenseKey.id, LicenseKey.key)
            .execution_options(synchronize_session=False)
        )
    return [key for _, key in sorted(taken.all())]


_POOLS = "digital.key_pools"


_WITH_POOLS = (
    select(LicenseKey.product_id)
    .where(LicenseKey.product_id.in_(bindparam("product_ids", expanding=True)))
    .distinct()
)


async def _with_pools(session: AsyncSession, product_ids: Sequence[str]) -> set[str]:
    return set((await session.execute(_WITH_POOLS, {"product_ids": list(product_ids)})).scalars())


def any_key_pool(product_ids: Select[str]) -> Exists:
    """Whether any of these products has a key pool, as a column for another read (a
    checkout session's, its line items' products): when it is false,
    ``note_no_key_pools`` spares ``issue_license_keys`` its own read."""
    return exists(select(LicenseKey.id).where(LicenseKey.product_id.in_(product_ids)))


def note_no_key_pools(session: AsyncSession, *, product_ids: Iterable[str]) -> None:
    """None of these products has a key pool, as this transaction has read
    (``any_key_pool``): ``issue_license_keys`` asks no more for them."""
    read: dict[str, bool] = transaction_memo(session).setdefault(_POOLS, {})
    read.update(dict.fromkeys(product_ids, False))


async def read_key_pools(session: AsyncSession, *, product_ids: Iterable[str]) -> None:
    """Which of these products have a key pool, in one statement, for the rest of this
    transaction: ``issue_license_keys`` then asks no more for them (a batch of paid
    invoices). A pool added meanwhile is as if added just after the order."""
    wanted = sorted(set(product_ids))
    if not wanted:
        return
    found = await _with_pools(session, wanted)
    read: dict[str, bool] = transaction_memo(session).setdefault(_POOLS, {})
    read.update({product_id: product_id in found for product_id in wanted})


async def issue_license_keys(
    session: AsyncSession,
    *,
    creator_id: str,
    order_id: str,
    lines: Sequence[OrderedLine],
    now: datetime,
) -> int:
    """Give each line of a product with a key pool one key per unit, from the pool, in
    key order. Returns how many keys were issued; a line whose pool runs short gets what
    is left and is owed the rest (``give_owed_keys`` gives them when keys are added)."""
    product_ids = sorted({line.product_id for line in lines})
    if not product_ids:
        return 0
    read: dict[str, bool] = transaction_memo(session).get(_POOLS, {})
    if all(product_id in read for product_id in product_ids):
        with_pools = {product_id for product_id in product_ids if read[product_id]}
    else:
        with_pools = await _with_pools(session, product_ids)
    issued = 0
    for line in sorted(lines, key=lambda line: line.line_id):
        if line.product_id not in with_pools:
            continue
        count = len(await _take_keys(session, order_id=order_id, line=line, now=now))
        issued += count
        if count < line.quantity:
            session.add(
                OwedLicenseKeys(
                    order_line_id=line.line_id,
                    order_id=order_id,
                    creator_id=creator_id,
                    product_id=line.product_id,
                    quantity=line.quantity - count,
                    created_at=now,
                )
            )
    # What is owed is written by the session's next flush (any later read's autoflush, or
    # the caller's): a charge batch writes its outcomes' rows in one statement.
    return issued


async def give_owed_keys(
    session: AsyncSession, *, creator_id: str, product_id: str, now: datetime
) -> int:
    """Give keys from the product's pool to the order lines owed some, oldest first (run
    after keys are added, in that transaction); returns how many were given. The owed
    rows are locked in key order, so two concurrent refills never give one line twice.

    Each order given keys gets one ``order.license_keys_issued`` event with them (the
    buyer is emailed the keys when it is dispatched), in this transaction: it exists if
    and only if the keys were given."""
    owed = (
        (
            await session.execute(
                select(OwedLicenseKeys)
                .where(
                    OwedLicenseKeys.creator_id == creator_id,
                    OwedLicenseKeys.product_id == product_id,
                )
                .order_by(OwedLicenseKeys.order_line_id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        )
        .scalars()
        .all()
    )
    given: dict[str, list[str]] = {}  # order → the keys it got now, in line order
    paid_off: set[int] = set()
    for debt in owed:
        keys = await _take_keys(
            session,
            order_id=debt.order_id,
            line=OrderedLine(
                line_id=debt.order_line_id, product_id=product_id, quantity=debt.quantity
            ),
            now=now,
        )
        if keys:
            given.setdefault(debt.order_id, []).extend(keys)
        if len(keys) == debt.quantity:
            await session.delete(debt)
            paid_off.add(debt.order_line_id)
        else:
            debt.quantity -= len(keys)
            break  # the pool is empty again
    still_owed: dict[str, int] = {}  # order → units of this product it is still owed
    for debt in owed:
        if debt.order_line_id not in paid_off:
            still_owed[debt.order_id] = still_owed.get(debt.order_id, 0) + debt.quantity
    for order_id, keys in given.items():
        await emit(
            session,
            creator_id=creator_id,
            type=KEYS_ISSUED_EVENT,
            data={
                "object": "license_keys_issued",
                "order": order_id,
                "product": product_id,
                "keys": keys,
                "license_keys_missing": still_owed.get(order_id, 0),
            },
            now=now,
        )
    await session.flush()
    return sum(len(keys) for keys in given.values())


async def forget_owed_keys(session: AsyncSession, *, order_id: str) -> None:
    """The order was refunded in full: it is owed no more keys."""
    await session.execute(delete(OwedLicenseKeys).where(OwedLicenseKeys.order_id == order_id))


@dataclass(frozen=True, slots=True)
class DownloadView:
    file_id: str
    filename: str
    content_type: str
    size: int
    url: str
    expires_at: datetime
    download_count: int
    download_limit: int

    @property
    def downloads_left(self) -> int:
        return max(0, self.download_limit - self.download_count)


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    product_id: str
    line_id: int
    issued_at: datetime


@dataclass(frozen=True, slots=True)
class Deliverables:
    downloads: list[DownloadView]
    license_keys: list[IssuedKey]
    # Units bought of products with a key pool that had no key left for them yet.
    license_keys_missing: int

    @property
    def is_empty(self) -> bool:
        return not self.downloads and not self.license_keys and not self.license_keys_missing


async def deliverables(
    session: AsyncSession,
    *,
    order_id: str,
    lines: Sequence[OrderedLine],
    links: signing.Links,
    now: datetime,
) -> Deliverables:
    """What an order delivers now: a freshly signed link (valid for ``links.ttl`` from
    ``now``) to each file of its products, with the order's download count of it, and
    the keys issued to its lines."""
    found = await deliverables_of_orders(session, orders={order_id: lines}, links=links, now=now)
    return found[order_id]


async def deliverables_of_orders(
    session: AsyncSession,
    *,
    orders: Mapping[str, Sequence[OrderedLine]],
    links: signing.Links,
    now: datetime,
) -> dict[str, Deliverables]:
    """``deliverables`` of many orders (by order id) in four statements, however many
    orders there are: the worker's receipts for a batch of paid orders read them so."""
    order_ids = sorted(orders)
    if not order_ids:
        return {}
    product_ids = sorted({line.product_id for lines in orders.values() for line in lines})
    attached: list[tuple[str, File]] = (
        [
            (str(product_id), file)
            for product_id, file in (
                await session.execute(
                    select(ProductFile.product_id, File)
                    .join(ProductFile, ProductFile.file_id == File.id)
                    .where(ProductFile.product_id.in_(product_ids))
                    .order_by(ProductFile.created_at, File.id)
                )
            ).all()
        ]
        if product_ids
        else []
    )
    counts: dict[tuple[str, str], int] = {}
    if attached:
        counts = {
            (str(order), str(file)): int(count)
            for order, file, count in (
                await session.execute(
                    select(Download.order_id, Download.file_id, Download.count).where(
                        Download.order_id.in_(order_ids)
                    )
                )
            ).all()
        }
    keys = (
        (
            await session.execute(
                select(LicenseKey)
                .where(LicenseKey.order_id.in_(order_ids))
                .order_by(LicenseKey.order_line_id, LicenseKey.id)
            )
        )
        .scalars()
        .all()
    )
    owed = {
        str(order): int(quantity)
        for order, quantity in (
            await session.execute(
                select(OwedLicenseKeys.order_id, func.sum(OwedLicenseKeys.quantity))
                .where(OwedLicenseKeys.order_id.in_(order_ids))
                .group_by(OwedLicenseKeys.order_id)
            )
        ).all()
    }
    found: dict[str, Deliverables] = {}
    for order_id in order_ids:
        products = {line.product_id for line in orders[order_id]}
        # A file attached to two of the order's products is delivered once.
        files = list(
            {file.id: file for product_id, file in attached if product_id in products}.values()
        )
        downloads = []
        for file in files:
            link = signing.sign(links, order_id=order_id, file_id=file.id, now=now)
            downloads.append(
                DownloadView(
                    file_id=file.id,
                    filename=file.filename,
                    content_type=file.content_type,
                    size=file.size,
                    url=link.url,
                    expires_at=link.expires_at,
                    download_count=counts.get((order_id, file.id), 0),
                    download_limit=links.limit,
                )
            )
        issued = [
            IssuedKey(
                key=key.key,
                product_id=key.product_id,
                line_id=key.order_line_id or 0,
                issued_at=key.issued_at or now,
            )
            for key in keys
            if key.order_id == order_id
        ]
        found[order_id] = Deliverables(
            downloads=downloads, license_keys=issued, license_keys_missing=owed.get(order_id, 0)
        )
    return found


async def count_download(
    session: AsyncSession, *, order_id: str, file_id: str, limit: int, now: datetime
) -> File:
    """Count one download of ``file_id`` for ``order_id`` and return the file to send.

    Raises:
        FileNotFound, DownloadLimitReached (``limit`` downloads counted already).
    """
    file = await session.get(File, file_id)
    if file is None:
        raise FileNotFound(f"no file {file_id!r}")
    await session.execute(
        insert_for(session)(Download)
        .values(order_id=order_id, file_id=file_id, creator_id=file.creator_id, count=0)
        .on_conflict_do_nothing(index_elements=[Download.order_id, Download.file_id])
    )
    counted = await session.execute(
        update(Download)
        .where(
            Download.order_id == order_id,
            Download.file_id == file_id,
            Download.count < limit,
        )
        .values(count=Download.count + 1, last_downloaded_at=now)
        .returning(Download.count)
        .execution_options(synchronize_session=False)
    )
    if counted.first() is None:
        raise DownloadLimitReached(
            f"{file.filename} has been downloaded {limit} times for this order, the most "
            "it allows; ask the seller if you need it again"
        )
    return file
