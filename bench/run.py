"""``make bench``: run the benchmarks, print a table each, write ``bench/results/<name>.json``.

python -m bench.run [--only channels|checkout|drops|renewals|webhooks] [--duration 20] [--quick]
                   [--clients 8 --clients 64] [--subscriptions 1000] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench import channels, checkout, drops, harness, renewals, webhooks

RESULTS = harness.ROOT / "bench" / "results"
BENCHMARKS: dict[str, Callable[..., dict[str, Any]]] = {
    channels.NAME: channels.run,
    checkout.NAME: checkout.run,
    drops.NAME: drops.run,
    webhooks.NAME: webhooks.run,
    renewals.NAME: renewals.run,
}
COLUMNS = ("completed", "errors", "per_second", "p50_ms", "p99_ms")


def _table(name: str, results: dict[str, Any]) -> Table:
    table = Table(title=f"{name} (concurrency {results['concurrency']})")
    table.add_column("target")
    for column in (*COLUMNS, "notes"):
        table.add_column(column, justify="right" if column != "notes" else "left")
    for target, measured in results.items():
        if not isinstance(measured, dict) or target == "machine":
            continue
        notes = "\n".join(
            f"{k}: " + ", ".join(f"{a}={b}" for a, b in v.items())
            if isinstance(v, dict)
            else f"{k}={v}"
            for k, v in measured.items()
            if k not in COLUMNS
        )
        table.add_row(target, *(str(measured.get(c, "")) for c in COLUMNS), notes)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--concurrency", type=int, default=8, help="webhooks benchmark")
    parser.add_argument(
        "--clients",
        type=int,
        action="append",
        help="checkout: concurrent clients per run, repeatable (default: 8 and 64)",
    )
    parser.add_argument(
        "--serve",
        action="append",
        metavar="DATABASE=OPTIONS",
        help="checkout and drops: 'stallholder serve' options for one database instead of "
        "the best measured ones, e.g. --serve 'postgresql=--workers 2'",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=checkout.DEFAULT_ROUNDS,
        help="checkout: measured rounds per client count, floor and Stallholder in "
        f"alternation; the ratio is the median round's (default {checkout.DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="renewals: worker processes side by side on PostgreSQL (default 1; SQLite: 1)",
    )
    parser.add_argument(
        "--subscriptions",
        type=int,
        help=f"renewals: subscriptions due (default {renewals.FULL_SIZE:,}; "
        f"{renewals.QUICK_SIZE:,} with --quick)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="channels: stock movements per second over the 1,000 SKUs (default 5)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"3 s runs and {renewals.QUICK_SIZE:,} renewals, for trying it out",
    )
    arguments = parser.parse_args()
    duration = 3.0 if arguments.quick else arguments.duration
    warmup = 1.0 if arguments.quick else arguments.warmup
    console = Console(width=150)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in arguments.only or sorted(BENCHMARKS):
        if name == renewals.NAME:
            # Minutes to an hour: a bar per database, of the invoices paid so far.
            with Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ) as progress:
                results = renewals.run(
                    count=arguments.subscriptions
                    or (renewals.QUICK_SIZE if arguments.quick else renewals.FULL_SIZE),
                    progress=progress,
                    workers=arguments.workers,
                )
            _report(console, name, results)
            continue
        with console.status(f"Running {name} ({duration:g} s per target)…"):
            if name == checkout.NAME:
                serve = dict(option.split("=", 1) for option in arguments.serve or ())
                results = checkout.run(
                    clients=arguments.clients or [8, 64],
                    warmup=warmup,
                    duration=duration,
                    rounds=1 if arguments.quick else arguments.rounds,
                    serve_options={db: options.split() for db, options in serve.items()},
                )
            elif name == channels.NAME:
                results = channels.run(
                    duration=15.0 if arguments.quick else max(arguments.duration, 60.0),
                    rate=arguments.rate,
                )
            elif name == drops.NAME:
                serve = dict(option.split("=", 1) for option in arguments.serve or ())
                results = drops.run(
                    warmup=warmup,
                    duration=duration,
                    serve_options=serve.get("postgresql", "").split(),
                )
            else:
                results = BENCHMARKS[name](
                    concurrency=arguments.concurrency, warmup=warmup, duration=duration
                )
        _report(console, name, results)


def _report(console: Console, name: str, measured: dict[str, Any]) -> None:
    """Print a benchmark's table and write ``bench/results/<name>.json``."""
    results = {"benchmark": name, "machine": harness.machine(), **measured}
    if name == checkout.NAME:
        console.print(checkout.table(results))
    elif name == channels.NAME:
        console.print(channels.table(results))
    elif name == drops.NAME:
        console.print(drops.table(results))
    else:
        console.print(_table(name, results))
    console.print(results["machine"])
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    console.print(f"wrote {path.relative_to(harness.ROOT)}")


if __name__ == "__main__":
    main()
