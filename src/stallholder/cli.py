"""The ``stallholder`` command: serve, worker, migrate, demo, creators, ledger, jobs,
inventory."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from enum import StrEnum
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from stallholder.accounts import service as accounts
from stallholder.accounts.service import resolve_admin_key
from stallholder.kit.clock import SystemClock
from stallholder.kit.db import Database
from stallholder.ledger import service as ledger
from stallholder.payments.config import (
    GatewayMisconfigured,
    check_gateway_settings,
    gateway_from_settings,
)
from stallholder.payments.gateway import Gateway, SandboxGateway
from stallholder.payments.sandbox import DatabaseChargeStore
from stallholder.settings import Settings
from stallholder.wallets import service as wallets

app = typer.Typer(help="Stallholder: commerce infrastructure for creators.", no_args_is_help=True)
creators_app = typer.Typer(help="Manage creators.", no_args_is_help=True)
ledger_app = typer.Typer(help="The double-entry ledger.", no_args_is_help=True)
app.add_typer(creators_app, name="creators")
app.add_typer(ledger_app, name="ledger")
jobs_app = typer.Typer(
    help="Due work: list what is due, running and dead (stallholder jobs), retry a dead item.",
    invoke_without_command=True,
)
app.add_typer(jobs_app, name="jobs")
inventory_app = typer.Typer(
    help="Stock from spreadsheets: import counts and production batches, download templates.",
    no_args_is_help=True,
)
app.add_typer(inventory_app, name="inventory")
mail_app = typer.Typer(
    help="Emails written to files (the embedded default, without STALLHOLDER_SMTP_URL).",
    no_args_is_help=True,
)
app.add_typer(mail_app, name="mail")
console = Console()


def _settings(*, host: str = "127.0.0.1", port: int | None = None) -> Settings:
    """The environment's settings. Without ``STALLHOLDER_BASE_URL`` the public base URL
    (checkout links, emails) follows the address being served: ``--port`` or ``PORT``."""
    settings = Settings()
    if "base_url" in settings.model_fields_set:
        return settings
    port = port if port is not None else int(os.environ.get("PORT", "8000"))
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a bind-all address is not a URL host
        host = "127.0.0.1"
    return settings.model_copy(update={"base_url": f"http://{host}:{port}"})


def _gateway(settings: Settings, database: Database) -> Gateway:
    """The configured payment gateway; a clear message and exit 2 when it lacks settings."""
    try:
        return gateway_from_settings(settings, database=database)
    except GatewayMisconfigured as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=2) from error


def _configure_logging() -> None:
    """INFO for our own loggers; httpx's line per outbound request (every channel push
    and poll) only when something goes wrong."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def migrate() -> None:
    """Apply database migrations (creates the SQLite file if needed)."""
    from stallholder.migrations import upgrade

    settings = _settings()
    with console.status("Applying migrations…"):
        upgrade(settings.resolved_database_url())
    console.print(
        f"[green]Database is up to date[/green] ({_redact(settings.resolved_database_url())})"
    )


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (the PORT variable sets the default).")] = int(
        os.environ.get("PORT", "8000")
    ),
    worker: Annotated[
        bool | None,
        typer.Option(
            help="Run the worker: embedded in this process, or in a process of its own with "
            "--workers above 1 (default: STALLHOLDER_EMBEDDED_WORKER, which is true)."
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Server processes. Above 1 needs PostgreSQL; the worker then runs in one "
            "process of its own beside them.",
        ),
    ] = 1,
) -> None:
    """Serve the API and pages, with the embedded worker."""
    import uvicorn

    from stallholder.app import create_app
    from stallholder.serving import uvicorn_options

    _configure_logging()
    settings = _settings(host=host, port=port)
    try:
        check_gateway_settings(settings)
    except GatewayMisconfigured as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=2) from error
    if workers > 1:
        _serve_processes(settings, host=host, port=port, workers=workers, worker=worker)
        return
    uvicorn.run(
        create_app(settings, run_worker=worker),
        host=host,
        port=port,
        log_level="info",
        access_log=False,
        **uvicorn_options(settings),
    )


def _serve_processes(
    settings: Settings, *, host: str, port: int, workers: int, worker: bool | None
) -> None:
    """``workers`` uvicorn processes on one socket and, unless turned off, one worker
    process beside them: the worker is never embedded here, so due work runs once.

    SQLite is refused: it has one writer, so more processes only queue for its lock."""
    import multiprocessing

    import uvicorn

    from stallholder.kit.db import is_sqlite

    if is_sqlite(settings.resolved_database_url()):
        console.print(
            "[red]--workers above 1 needs PostgreSQL (STALLHOLDER_DATABASE_URL=postgresql://…): "
            "SQLite has one writer, so more server processes only wait for its lock. "
            "Serve SQLite with one process.[/red]"
        )
        raise typer.Exit(code=2)
    # Generated once here, so the processes share one key instead of racing to write it.
    admin_key, generated = resolve_admin_key(settings.admin_key, settings.data_dir)
    if generated:
        console.print(f"generated a platform admin key (kept in {settings.data_dir}): {admin_key}")
    has_worker = settings.embedded_worker if worker is None else worker
    # The server processes build their app from the environment (``create_app()``).
    environment = {"STALLHOLDER_BASE_URL": settings.base_url, "STALLHOLDER_EMBEDDED_WORKER": "0"}
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    worker_process = None
    try:
        if has_worker:
            worker_process = multiprocessing.get_context("spawn").Process(
                target=run_worker, name="stallholder-worker"
            )
            worker_process.start()
        uvicorn.run(
            "stallholder.app:create_app",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            log_level="info",
            access_log=False,
            # A spawned server process imports the whole app before it can answer
            # uvicorn's health check; on a loaded machine that takes longer than the
            # default 5 s, and uvicorn would kill and respawn it forever.
            timeout_worker_healthcheck=60,
        )
    finally:
        if worker_process is not None:
            _stop_process(worker_process)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _stop_process(process: BaseProcess) -> None:
    """Interrupt (the worker finishes its pass and closes), then terminate if it hangs."""
    if process.is_alive() and process.pid is not None:
        os.kill(process.pid, signal.SIGINT)
        process.join(timeout=15)
    if process.is_alive():
        process.terminate()
    process.join()


@app.command(name="worker")
def run_worker() -> None:
    """Run a standalone worker (the outbox and due work) until interrupted."""
    from stallholder.jobs.worker import Worker

    _configure_logging()
    settings = _settings()

    async def main() -> None:
        database = Database(settings.resolved_database_url())
        gateway = _gateway(settings, database)
        try:
            await Worker(database, SystemClock(), settings=settings, gateway=gateway).run()
        finally:
            await gateway.aclose()
            await database.dispose()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        console.print("worker stopped")


@app.command()
def demo() -> None:
    """Seed the demo platform (idempotent) and print its URLs and keys."""
    from stallholder.demo import (
        CREATORS,
        DEMO_BUYER,
        DEMO_CHANNELS_ENV,
        connect_channels,
        demo_channels,
        seed,
    )
    from stallholder.digital.config import storage_from_settings

    settings = _settings()
    admin_key, _ = resolve_admin_key(settings.admin_key, settings.data_dir)
    channel_urls = demo_channels(os.environ.get(DEMO_CHANNELS_ENV))

    async def main() -> dict[str, dict[str, str]]:
        database = Database(settings.resolved_database_url())
        try:
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("Seeding demo creators", total=len(CREATORS))

                def advance(name: str) -> None:
                    progress.update(task, advance=1, description=f"Seeding {name}")

                keys = await seed(
                    database,
                    clock=SystemClock(),
                    gateway=SandboxGateway(DatabaseChargeStore(database)),
                    data_dir=settings.data_dir,
                    base_url=settings.base_url,
                    advance=advance,
                    fees=ledger.platform_fee_policy(settings),
                    storage=storage_from_settings(settings),
                )
            if channel_urls:
                with console.status("Connecting Kiln & Clay to the local Shopify and Etsy"):
                    await connect_channels(
                        database, settings, urls=channel_urls, clock=SystemClock()
                    )
            return keys
        finally:
            await database.dispose()

    keys = asyncio.run(main())
    base = settings.base_url
    console.rule("Stallholder demo")
    for entry in keys.values():
        console.print(f"[bold]{entry['display_name']}[/bold]  {entry['creator']}")
        console.print(f"  secret key:      {entry['secret_key']}", soft_wrap=True)
        console.print(f"  publishable key: {entry['publishable_key']}", soft_wrap=True)
    console.print(f"Store:         {base}/")
    for slug, entry in keys.items():
        console.print(f"  {entry['display_name']}: {base}/s/{slug}")
    console.print(
        f"Buyer portal:  {base}/portal  (sign in as {DEMO_BUYER}; without a mail server the "
        f"link is written to {settings.data_dir / 'mail'}: "
        f".venv/bin/stallholder mail latest --to {DEMO_BUYER})",
        soft_wrap=True,
    )
    embeddable = [entry for entry in keys.values() if entry.get("embed_price")]
    if embeddable:
        console.print(
            f"Embed demo:    {base}/demo/embed?key={embeddable[0]['publishable_key']}"
            f"&price={embeddable[0]['embed_price']}",
            soft_wrap=True,
        )
    console.print(f"API docs:      {base}/docs  (works offline; Authorize with a key below)")
    console.print(f"OpenAPI:       {base}/openapi.json")
    console.print(f"Admin key:     {admin_key}", soft_wrap=True)
    console.print(
        f"Try:           curl -s {base}/v1/products -H 'Authorization: Bearer "
        f"{next(iter(keys.values()))['secret_key'] if keys else 'sk_…'}'"
    )
    console.print("Due work:      .venv/bin/stallholder jobs  (emails, webhooks, expiries, …)")
    console.print(f"Dashboard:     {base}/dashboard", soft_wrap=True)
    if channel_urls:
        console.print(
            f"Channels:      {base}/dashboard/channels  (Kiln & Clay on a local Shopify "
            f"{channel_urls.get('shopify', '')} and Etsy {channel_urls.get('etsy', '')}; sell "
            f"there: curl -X POST {channel_urls.get('shopify', '')}/_double/sell -H "
            '\'content-type: application/json\' -d \'{"sku": "KC-MOON-MUG", "quantity": 1}\')',
            soft_wrap=True,
            highlight=False,
        )
    console.print(
        "  sign in with a demo creator's email: " + ", ".join(spec.email for spec in CREATORS),
        soft_wrap=True,
        highlight=False,
    )
    if settings.smtp_url:
        console.print("  the sign-in link goes to the mail server in STALLHOLDER_SMTP_URL")
    else:
        console.print(
            "  no mail server is set, so the link is written to "
            f"{settings.data_dir / 'mail'}; print it with: "
            f".venv/bin/stallholder mail latest --to {CREATORS[0].email}",
            soft_wrap=True,
            highlight=False,
        )


@creators_app.command("create")
def create_creator(
    name: Annotated[str, typer.Option("--name", help="Display name.")],
    email: Annotated[str, typer.Option("--email", help="Contact email.")],
    slug: Annotated[
        str | None, typer.Option(help="URL slug; derived from the name if left out.")
    ] = None,
    listed: Annotated[
        bool, typer.Option("--listed/--unlisted", help="List the creator in the store index.")
    ] = False,
) -> None:
    """Create a creator and print its keys (shown once)."""
    from stallholder.accounts.schemas import CreatorCreate

    try:
        body = CreatorCreate(display_name=name, email=email, slug=slug, listed=listed)
    except ValidationError as error:
        for problem in error.errors():
            field = ".".join(str(part) for part in problem["loc"])
            console.print(f"[red]{field}: {problem['msg']}[/red]")
        raise typer.Exit(code=2) from error
    settings = _settings()

    async def main() -> tuple[str, str, str, str]:
        database = Database(settings.resolved_database_url())
        try:
            async with database.unit_of_work() as session:
                creator, secret, publishable = await accounts.create_creator(
                    session,
                    display_name=body.display_name,
                    email=body.email,
                    slug=body.slug,
                    platform_fee_bps=None,
                    platform_fee_fixed=None,
                    listed=body.listed,
                    now=SystemClock().now(),
                )
                return creator.id, creator.slug, secret, publishable
        finally:
            await database.dispose()

    try:
        creator_id, creator_slug, secret, publishable = asyncio.run(main())
    except accounts.SlugTaken as error:
        console.print(f"[red]{error.detail}[/red]")
        raise typer.Exit(code=1) from error
    console.print(f"Created {creator_id} ({creator_slug})")
    console.print(f"secret key:      {secret}")
    console.print(f"publishable key: {publishable}")


@ledger_app.command("verify")
def verify_ledger() -> None:
    """Check that every transaction sums to zero per currency, every balance matches its
    lines and every wallet's balance matches its ledger account. Exits 1 and lists the
    offenders otherwise."""
    settings = _settings()

    async def main() -> tuple[ledger.VerifyReport, int, list[wallets.WalletMismatch]]:
        database = Database(settings.resolved_database_url())
        try:
            async with database.unit_of_work() as session:
                report = await ledger.verify(session)
                checked, mismatched = await wallets.mismatched_wallets(session)
                return report, checked, mismatched
        finally:
            await database.dispose()

    with console.status("Verifying the ledger…"):
        report, wallets_checked, mismatched_wallets = asyncio.run(main())
    for txn, currency, total in report.unbalanced:
        console.print(f"[red]unbalanced[/red] transaction {txn}: {currency} lines sum to {total}")
    for account, currency, expected, actual in report.mismatched_balances:
        console.print(
            f"[red]balance mismatch[/red] {account} {currency}: lines sum to {expected}, "
            f"balance says {actual}"
        )
    for mismatch in mismatched_wallets:
        console.print(
            f"[red]wallet mismatch[/red] {mismatch.wallet_id} {mismatch.currency}: balance "
            f"{mismatch.wallet_balance}, ledger {mismatch.account} says {mismatch.ledger_balance}"
        )
    if not report.is_clean or mismatched_wallets:
        raise typer.Exit(code=1)
    console.print(
        f"[green]Ledger balances[/green]: {report.transactions_checked} transactions, "
        f"{report.accounts_checked} account balances, {wallets_checked} wallets checked"
    )


# What ``stallholder jobs --state`` shows: due (pending and due now), running, dead.
_JOB_STATES = {"due": "pending", "running": "running", "dead": "dead"}


@mail_app.command("latest")
def latest_mail(
    to: Annotated[
        str | None, typer.Option(help="Only emails to this address (e.g. a sign-in link's).")
    ] = None,
) -> None:
    """Print the newest email written to <data_dir>/mail: its headers and its text, with
    any link in full (a portal sign-in link works once, for 15 minutes)."""
    from stallholder.notifications.transport import latest_written

    settings = _settings()
    if settings.smtp_url:
        console.print("STALLHOLDER_SMTP_URL is set: emails go to that server, not to files.")
        raise typer.Exit(code=1)
    message = latest_written(settings.data_dir / "mail", to=to)
    if message is None:
        wanted = f" to {to}" if to else ""
        console.print(f"no email{wanted} in {settings.data_dir / 'mail'}")
        raise typer.Exit(code=1)
    for header in ("Date", "To", "Subject"):
        console.print(f"{header}: {message[header]}", soft_wrap=True, highlight=False)
    body = message.get_body(preferencelist=("plain",))
    text = body.get_content() if body is not None else ""
    console.print()
    # Plain print: a URL must not be wrapped or styled, so it can be copied whole.
    print(str(text).replace("\r\n", "\n"))


@jobs_app.callback()
def list_jobs(
    context: typer.Context,
    state: Annotated[
        str | None, typer.Option(help="Only this state: due, running or dead.")
    ] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only this kind, e.g. events.deliver_webhook.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many rows.")] = 100,
) -> None:
    """List due, running and dead work, oldest due first."""
    if context.invoked_subcommand is not None:
        return
    from stallholder.kit import work

    if state is not None and state not in _JOB_STATES:
        console.print(f"[red]--state must be one of {', '.join(_JOB_STATES)}, not {state!r}[/red]")
        raise typer.Exit(code=2)
    states = [_JOB_STATES[state]] if state is not None else list(work.STATES)
    settings = _settings()

    async def main() -> list[work.WorkItem]:
        database = Database(settings.resolved_database_url())
        try:
            async with database.unit_of_work() as session:
                return await work.list_work(
                    session, now=SystemClock().now(), states=states, kind=kind, limit=limit
                )
        finally:
            await database.dispose()

    items = asyncio.run(main())
    table = Table(title=f"Work ({len(items)})")
    for column in ("id", "kind", "state", "attempts", "due / lease until", "creator", "last error"):
        table.add_column(column, overflow="fold")
    for item in items:
        shown = "due" if item.state == "pending" else item.state
        colour = {"dead": "red", "running": "yellow"}.get(item.state, "green")
        table.add_row(
            item.id,
            item.kind,
            f"[{colour}]{shown}[/{colour}]",
            str(item.attempts),
            item.due_at.isoformat(timespec="seconds"),
            item.creator_id or "",
            (item.last_error or "")[:200],
        )
    console.print(table)


@jobs_app.command("retry")
def retry_job(work_id: Annotated[str, typer.Argument(help="The dead item's id (wrk_…).")]) -> None:
    """Put a dead item back: due now, with its attempts counted from zero."""
    from stallholder.kit import work

    settings = _settings()

    async def main() -> work.WorkItem:
        database = Database(settings.resolved_database_url())
        try:
            async with database.unit_of_work() as session:
                return await work.retry(session, work_id=work_id, now=SystemClock().now())
        finally:
            await database.dispose()

    try:
        item = asyncio.run(main())
    except work.WorkNotFound as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from error
    except work.WorkNotDead as error:
        console.print(f"[red]{error}; only dead work can be retried[/red]")
        raise typer.Exit(code=1) from error
    console.print(f"[green]{item.id}[/green] ({item.kind}) is due again")


class ImportKind(StrEnum):
    """The CLI's short names of the two templates."""

    STOCK = "stock"
    BATCHES = "batches"


_TEMPLATE_KINDS = {"stock": "stock_counts", "batches": "production_batches"}


def _print_sheet_problems(errors: Sequence[dict[str, Any]]) -> None:
    table = Table(title=f"[red]{len(errors)} problem(s); nothing was imported[/red]")
    for column in ("row", "column", "problem"):
        table.add_column(column, overflow="fold")
    for error in errors:
        table.add_row(str(error["row"]), error["column"] or "", error["msg"])
    console.print(table)


@inventory_app.command("import")
def import_inventory(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="A filled-in .csv or .xlsx."
        ),
    ],
    creator: Annotated[str, typer.Option("--creator", help="The creator's id (cr_…).")],
    kind: Annotated[
        ImportKind, typer.Option(help="stock (stock counts) or batches (production batches).")
    ] = ImportKind.STOCK,
) -> None:
    """Import a stock-count or production-batch file, all rows or none. Any problem (a bad
    cell, an unknown SKU or location, a count below what buyers hold) is listed by row and
    column, and nothing changes (exit 1)."""
    from stallholder.accounts.service import CreatorNotFound, get_creator
    from stallholder.inventory import imports
    from stallholder.spreadsheets.inventory import parse_production_batches, parse_stock_counts
    from stallholder.spreadsheets.sheets import InvalidSpreadsheet, detect_format

    settings = _settings()
    try:
        file_format = detect_format(file.name)
    except InvalidSpreadsheet as error:
        _print_sheet_problems(error.extensions["errors"])
        raise typer.Exit(code=1) from error
    data = file.read_bytes()
    with console.status(f"Reading {file.name}…"):
        if kind is ImportKind.STOCK:
            counts = parse_stock_counts(data, file_format=file_format)
            errors, total = counts.errors, len(counts.rows)
        else:
            batches = parse_production_batches(data, file_format=file_format)
            errors, total = batches.errors, len(batches.rows)
    if errors:
        _print_sheet_problems(InvalidSpreadsheet.from_errors(errors).extensions["errors"])
        raise typer.Exit(code=1)

    async def main(advance: imports.Advance) -> imports.ImportSummary:
        database = Database(settings.resolved_database_url())
        try:
            async with database.unit_of_work() as session:
                await get_creator(session, creator)
                now = SystemClock().now()
                if kind is ImportKind.STOCK:
                    return await imports.apply_stock_counts(
                        session,
                        creator_id=creator,
                        sheet=counts,
                        file_name=file.name,
                        actor="cli",
                        now=now,
                        advance=advance,
                    )
                return await imports.apply_production_batches(
                    session,
                    creator_id=creator,
                    sheet=batches,
                    file_name=file.name,
                    now=now,
                    advance=advance,
                )
        finally:
            await database.dispose()

    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"Importing {file.name}", total=total)
            summary = asyncio.run(main(lambda: progress.update(task, advance=1)))
    except CreatorNotFound as error:
        console.print(f"[red]{error.detail}[/red]")
        raise typer.Exit(code=1) from error
    except InvalidSpreadsheet as error:
        _print_sheet_problems(error.extensions["errors"])
        raise typer.Exit(code=1) from error
    if summary.kind.value == "stock_counts":
        console.print(
            f"[green]Imported {summary.rows} count(s)[/green] from {file.name}: "
            f"{summary.changed} changed, {summary.unchanged} unchanged"
        )
    else:
        console.print(
            f"[green]Imported {summary.rows} batch row(s)[/green] from {file.name}: "
            f"{summary.created} new, {summary.updated} updated"
        )


@inventory_app.command("template")
def inventory_template(
    kind: Annotated[
        ImportKind, typer.Option(help="stock (stock counts) or batches (production batches).")
    ],
    file_format: Annotated[str, typer.Option("--format", help="csv or xlsx.")] = "csv",
    output: Annotated[
        Path | None,
        typer.Option(help="Where to write it (default: stock_counts.csv etc. here)."),
    ] = None,
) -> None:
    """Write the empty stock-count or production-batch template."""
    from stallholder.spreadsheets.inventory import TemplateKind, template_file

    if file_format not in ("csv", "xlsx"):
        console.print(f"[red]--format must be csv or xlsx, not {file_format!r}[/red]")
        raise typer.Exit(code=2)
    template = template_file(
        TemplateKind(_TEMPLATE_KINDS[kind.value]), "csv" if file_format == "csv" else "xlsx"
    )
    target = output if output is not None else Path(template.filename)
    target.write_bytes(template.content)
    console.print(f"Wrote {target}")


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}{sep}{user}:***@{host}"
    return url


def main() -> None:
    app()
