"""Posting to the journal, reading balances, and verifying that the books balance."""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, TextClause, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from stallholder.kit.db import transaction_duties
from stallholder.kit.flush import PREFIX, Write, replace_write, write_with_flush
from stallholder.kit.ids import new_id
from stallholder.kit.pagination import Page, paginate
from stallholder.ledger.fees import FeeSchedule, Split
from stallholder.ledger.models import Balance, JournalLine, JournalTransaction
from stallholder.settings import Settings

BUYER_FUNDS = "external:buyer_funds"
PLATFORM_FEES = "platform:fees"
PROCESSOR_FEES = "processor:fees"


def platform_fee_policy(settings: Settings) -> FeeSchedule:
    """The platform's fee (``STALLHOLDER_PLATFORM_FEE_BPS`` and ``_FIXED``, the latter per
    currency); a creator's own terms are applied on top by ``orders.service.fee_policy_for``."""
    return FeeSchedule(bps=settings.platform_fee_bps, fixed=dict(settings.platform_fee_fixed))


def creator_account(creator_id: str) -> str:
    return f"creator:{creator_id}:balance"


def wallet_account(buyer_id: str) -> str:
    """The platform's liability to a buyer for the money in its wallet (ADR 0011): a
    positive balance is what the platform holds for the buyer, as a creator's is what it
    owes the creator."""
    return f"wallet:{buyer_id}"


class UnbalancedTransaction(ValueError):
    """A bug: lines that do not sum to zero were about to be posted."""


@dataclass(frozen=True, slots=True)
class Line:
    account: str
    amount: int


async def _bump_balances(session: AsyncSession, *, currency: str, amounts: dict[str, int]) -> None:
    """Atomic ``balance += amount`` for each account (insert on first use), in one
    statement; never read-decide-write. The rows go in account order, which is the order
    the database takes their locks in, so two postings never wait on each other in a cycle.
    """
    await session.execute(_balances_upsert(len(amounts)), _balance_values(currency, amounts))


def _balance_values(currency: str, amounts: dict[str, int]) -> dict[str, Any]:
    """The bound values of ``_balances_upsert``: the rows in account order, the order the
    database takes their locks in (so two postings never wait on each other in a cycle)."""
    values: dict[str, Any] = {}
    for n, account in enumerate(sorted(amounts)):
        values[f"account_{n}"] = account
        values[f"currency_{n}"] = currency
        values[f"amount_{n}"] = amounts[account]
    return values


def _balances_sql(rows: int) -> str:
    """``balance += amount`` for ``rows`` accounts, inserting those met for the first time:
    the same SQL on PostgreSQL and SQLite (``ON CONFLICT … DO UPDATE``)."""
    values = ", ".join(f"(:account_{n}, :currency_{n}, :amount_{n})" for n in range(rows))
    # Only bind parameters' names go into the text (numbered by ``rows``): no values.
    return (
        f"INSERT INTO balances (account, currency, amount) VALUES {values} "  # noqa: S608
        "ON CONFLICT (account, currency) DO UPDATE SET amount = balances.amount + excluded.amount"
    )


# These are SQL text, built once per shape, rather than expressions: SQLAlchemy gives a
# multi-row ``insert().values([...])`` no cache key, so it compiled such a statement
# afresh on every posting (about a millisecond of a sale's CPU); a text's compiled form
# is cached.


@functools.cache
def _balances_upsert(rows: int) -> TextClause:
    return text(_balances_sql(rows))


@functools.cache
def _posting(lines: int, accounts: int) -> TextClause:
    """PostgreSQL: a whole posting in one statement. The journal transaction and its lines
    are inserted by data-modifying CTEs of the balances' upsert (each runs exactly once,
    referenced or not; the lines' foreign key to the transaction is checked at the end of
    the statement, when both rows exist)."""
    line_values = ", ".join(
        f"(:t_creator_id, :t_id, :line_account_{n}, :currency, :line_amount_{n})"
        for n in range(lines)
    )
    return text(  # only bind parameters' names go into the text, numbered by ``lines``
        "WITH posted_transaction AS (INSERT INTO journal_transactions "  # noqa: S608
        "(id, creator_id, kind, reference_id, description, created_at) VALUES "
        "(:t_id, :t_creator_id, :t_kind, :t_reference_id, :t_description, :t_created_at)), "
        "posted_lines AS (INSERT INTO journal_lines "
        f"(creator_id, transaction_id, account, currency, amount) VALUES {line_values}) "
        + _balances_sql(accounts)
    )


# The postings of this transaction waiting for its next flush, and their one write.
_POSTINGS = "stallholder.ledger.postings_with_flush"


@dataclass(frozen=True, slots=True)
class _Posting:
    """A posting waiting for the flush: its journal transaction's row, its currency and
    its (non-zero) lines."""

    transaction: dict[str, Any]
    currency: str
    lines: tuple[Line, ...]


def _postings_write(postings: Sequence[_Posting]) -> Write:
    """The postings as one write (``kit.flush.Write``): their journal transactions, all
    their lines, and each balance moved once by what they add to it together, in
    (account, currency) order, the order the database takes the balances' locks in. The
    balances end as the postings one after another would leave them; one statement may
    not change a row twice, so they are summed first."""
    values: dict[str, Any] = {}
    amounts: dict[tuple[str, str], int] = defaultdict(int)
    line = 0
    for n, posting in enumerate(postings):
        values |= {f"t{n}_{name}": value for name, value in posting.transaction.items()}
        for posted in posting.lines:
            values[f"l{line}_creator_id"] = posting.transaction["creator_id"]
            values[f"l{line}_transaction_id"] = posting.transaction["id"]
            values[f"l{line}_account"] = posted.account
            values[f"l{line}_currency"] = posting.currency
            values[f"l{line}_amount"] = posted.amount
            amounts[(posted.account, posting.currency)] += posted.amount
            line += 1
    for n, (account, currency) in enumerate(sorted(amounts)):
        values[f"b{n}_account"] = account
        values[f"b{n}_currency"] = currency
        values[f"b{n}_amount"] = amounts[(account, currency)]
    ctes = _postings_ctes(len(postings), line, len(amounts))
    return Write(ctes, values, _postings_alone(len(postings), line, len(amounts)))


@functools.lru_cache(maxsize=256)
def _postings_ctes(transactions: int, lines: int, balances: int) -> str:
    """``_postings_write``'s SQL as CTEs of another statement, names and parameters
    prefixed (``kit.flush.PREFIX``): the transactions, the lines, the balances' upsert."""
    p = PREFIX
    transaction_values = ", ".join(
        f"(:{p}t{n}_id, :{p}t{n}_creator_id, :{p}t{n}_kind, :{p}t{n}_reference_id, "
        f":{p}t{n}_description, :{p}t{n}_created_at)"
        for n in range(transactions)
    )
    line_values = ", ".join(
        f"(:{p}l{n}_creator_id, :{p}l{n}_transaction_id, :{p}l{n}_account, "
        f":{p}l{n}_currency, :{p}l{n}_amount)"
        for n in range(lines)
    )
    balance_values = ", ".join(
        f"(:{p}b{n}_account, :{p}b{n}_currency, :{p}b{n}_amount)" for n in range(balances)
    )
    # Only bind parameters' names go into the text, numbered by the counts.
    return (
        f"{p}posted_transaction AS (INSERT INTO journal_transactions "  # noqa: S608
        "(id, creator_id, kind, reference_id, description, created_at) VALUES "
        f"{transaction_values}), "
        f"{p}posted_lines AS (INSERT INTO journal_lines "
        f"(creator_id, transaction_id, account, currency, amount) VALUES {line_values}), "
        f"{p}posted_balances AS (INSERT INTO balances (account, currency, amount) VALUES "
        f"{balance_values} ON CONFLICT (account, currency) DO UPDATE SET amount = "
        "balances.amount + excluded.amount)"
    )


@functools.lru_cache(maxsize=256)
def _postings_alone(transactions: int, lines: int, balances: int) -> TextClause:
    """``_postings_ctes`` as a statement of its own, with the parameters unprefixed."""
    ctes = _postings_ctes(transactions, lines, balances).replace(PREFIX, "")
    return text(f"WITH {ctes} SELECT 1")


async def post(
    session: AsyncSession,
    *,
    creator_id: str | None,
    kind: str,
    reference_id: str,
    currency: str,
    lines: Sequence[Line],
    description: str,
    now: datetime,
    with_flush: bool = False,
) -> str:
    """Write one balanced transaction and move the balances of its accounts; returns the
    transaction's id. On PostgreSQL all of it is one statement (``_posting``); on SQLite,
    three (the transaction, its lines, the balances).

    With ``with_flush`` (PostgreSQL), the posting is sent as part of the unit of work's
    next ``kit.flush.flush_together`` (at the latest its commit's): one statement fewer,
    for a caller that reads no balance or journal row before then (a sale's completion).
    Postings waiting so are gathered into one write (``_postings_write``): their
    transactions and lines, and each balance moved once by their sum (one statement may
    not change a row twice).

    Raises:
        UnbalancedTransaction: the lines do not sum to zero (a programming error).
    """
    if sum(line.amount for line in lines) != 0:
        raise UnbalancedTransaction(
            f"{kind} {reference_id}: lines sum to {sum(line.amount for line in lines)}, not 0"
        )
    transaction_id = new_id("txn")
    posted = [line for line in lines if line.amount != 0]
    # One row per account: a single upsert may not change the same row twice.
    amounts: dict[str, int] = defaultdict(int)
    for line in posted:
        amounts[line.account] += line.amount
    if posted and session.get_bind().dialect.name == "postgresql":
        row: dict[str, Any] = {
            "id": transaction_id,
            "creator_id": creator_id,
            "kind": kind,
            "reference_id": reference_id,
            "description": description,
            "created_at": now,
        }
        if with_flush:
            _post_with_flush(session, _Posting(row, currency, tuple(posted)))
        else:
            values: dict[str, Any] = {f"t_{name}": value for name, value in row.items()}
            values["currency"] = currency
            for n, line in enumerate(posted):
                values[f"line_account_{n}"] = line.account
                values[f"line_amount_{n}"] = line.amount
            values |= _balance_values(currency, amounts)
            await session.execute(_posting(len(posted), len(amounts)), values)
        return transaction_id
    session.add(
        JournalTransaction(
            id=transaction_id,
            creator_id=creator_id,
            kind=kind,
            reference_id=reference_id,
            description=description,
            created_at=now,
        )
    )
    if posted:
        # The lines in one statement (Core: the ORM would insert them one by one on SQLite
        # to read back each generated id, and nothing here needs them); the transaction
        # row goes first, by the autoflush.
        await session.execute(
            insert(cast(Table, JournalLine.__table__)),
            [
                {
                    "creator_id": creator_id,
                    "transaction_id": transaction_id,
                    "account": line.account,
                    "currency": currency,
                    "amount": line.amount,
                }
                for line in posted
            ],
        )
    else:
        await session.flush()
    if amounts:
        await _bump_balances(session, currency=currency, amounts=amounts)
    return transaction_id


def _post_with_flush(session: AsyncSession, posting: _Posting) -> None:
    """Leave ``posting`` to the next ``flush_together``, gathered with the postings
    already waiting for it into one write (``_postings_write``)."""
    duties = transaction_duties(session)
    waiting: tuple[Write, list[_Posting]] | None = duties.get(_POSTINGS)
    if waiting is not None:
        write, postings = waiting
        gathered = [*postings, posting]
        together = _postings_write(gathered)
        if replace_write(session, write, together):
            duties[_POSTINGS] = (together, gathered)
            return
    write = _postings_write([posting])
    write_with_flush(session, write)
    duties[_POSTINGS] = (write, [posting])


def payment_lines(creator_id: str, split: Split) -> list[Line]:
    """Buyer funds → creator balance, with platform and processor fees as their own lines."""
    return [
        Line(BUYER_FUNDS, -split.gross),
        Line(creator_account(creator_id), split.creator),
        Line(PLATFORM_FEES, split.platform_fee),
        Line(PROCESSOR_FEES, split.processor_fee),
    ]


def wallet_top_up_lines(buyer_id: str, *, amount: int, processor_fee: int) -> list[Line]:
    """The buyer's card paid ``amount`` into the wallet: the whole amount becomes the
    platform's liability to the buyer, and the platform bears the processor's fee on it
    (ADR 0011), as it does a fee the processor charged beyond the estimate."""
    return [
        Line(BUYER_FUNDS, -amount),
        Line(wallet_account(buyer_id), amount),
        Line(PROCESSOR_FEES, processor_fee),
        Line(PLATFORM_FEES, -processor_fee),
    ]


def wallet_payment_lines(buyer_id: str, creator_id: str, split: Split) -> list[Line]:
    """A payment from the buyer's wallet to a creator: the liability moves to the creator's
    balance, less the platform's fee (no processor is involved, so ``split`` has none)."""
    return [
        Line(wallet_account(buyer_id), -split.gross),
        Line(creator_account(creator_id), split.creator),
        Line(PLATFORM_FEES, split.platform_fee),
        Line(PROCESSOR_FEES, split.processor_fee),
    ]


def refund_lines(creator_id: str, split: Split) -> list[Line]:
    """The exact mirror of ``payment_lines`` for the refunded share."""
    return [Line(line.account, -line.amount) for line in payment_lines(creator_id, split)]


def processor_fee_adjustment_lines(difference: int) -> list[Line]:
    """The processor charged ``difference`` more than the fee the creator bore (negative:
    less); the platform absorbs it, so the creator's share stays what the charge fixed."""
    return [Line(PLATFORM_FEES, -difference), Line(PROCESSOR_FEES, difference)]


def dispute_lines(creator_id: str, withdrawn: int, *, fee: int = 0) -> list[Line]:
    """A dispute took ``withdrawn`` back to the buyer from the creator's balance, and the
    creator bore the processor's dispute ``fee`` (negative: funds or fee given back after
    a won dispute)."""
    return [
        Line(creator_account(creator_id), -withdrawn - fee),
        Line(BUYER_FUNDS, withdrawn),
        Line(PROCESSOR_FEES, fee),
    ]


async def balances_of(session: AsyncSession, *, account: str) -> dict[str, int]:
    rows = await session.execute(
        select(Balance.currency, Balance.amount).where(Balance.account == account)
    )
    return {row.currency: row.amount for row in rows}


async def balances_by_account(
    session: AsyncSession, *, accounts: Sequence[str]
) -> dict[tuple[str, str], int]:
    """The balances of ``accounts``, by (account, currency)."""
    if not accounts:
        return {}
    rows = await session.execute(
        select(Balance.account, Balance.currency, Balance.amount).where(
            Balance.account.in_(accounts)
        )
    )
    return {(row.account, row.currency): row.amount for row in rows}


async def list_transactions(
    session: AsyncSession, *, creator_id: str, limit: int, starting_after: str | None
) -> Page[JournalTransaction]:
    return await paginate(
        session,
        select(JournalTransaction).where(JournalTransaction.creator_id == creator_id),
        id_column=JournalTransaction.id,
        limit=limit,
        starting_after=starting_after,
    )


@dataclass
class VerifyReport:
    transactions_checked: int = 0
    accounts_checked: int = 0
    unbalanced: list[tuple[str, str, int]] = field(default_factory=list)
    mismatched_balances: list[tuple[str, str, int, int]] = field(default_factory=list)

    @property
    def is_clean(self) -> bool:
        return not self.unbalanced and not self.mismatched_balances


async def verify(session: AsyncSession) -> VerifyReport:
    """Check that every transaction sums to zero per currency and that every balance equals
    the sum of its account's lines."""
    report = VerifyReport()
    report.transactions_checked = (
        await session.execute(select(func.count()).select_from(JournalTransaction))
    ).scalar_one()
    unbalanced = await session.execute(
        select(JournalLine.transaction_id, JournalLine.currency, func.sum(JournalLine.amount))
        .group_by(JournalLine.transaction_id, JournalLine.currency)
        .having(func.sum(JournalLine.amount) != 0)
        .order_by(JournalLine.transaction_id)
    )
    report.unbalanced = [(txn, currency, int(total)) for txn, currency, total in unbalanced]

    sums: dict[tuple[str, str], int] = defaultdict(int)
    for account, currency, total in await session.execute(
        select(JournalLine.account, JournalLine.currency, func.sum(JournalLine.amount)).group_by(
            JournalLine.account, JournalLine.currency
        )
    ):
        sums[(account, currency)] = int(total)
    stored = {
        (account, currency): amount
        for account, currency, amount in (
            await session.execute(select(Balance.account, Balance.currency, Balance.amount))
        )
    }
    keys = sorted(set(sums) | set(stored))
    report.accounts_checked = len(keys)
    for key in keys:
        expected, actual = sums.get(key, 0), stored.get(key, 0)
        if expected != actual:
            report.mismatched_balances.append((key[0], key[1], expected, actual))
    return report
