"""The `egis` command line (also `python starter.py`).

Exit codes: 0 success; 1 refused (budget, state, exchange); 2 bad input or usage; 3 a server
is unreachable. Errors are one clear line on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from egis.config import Settings
from egis.errors import EgisError, InvalidInput, StackError
from egis.models import excerpt
from egis.output import cell, table, to_json
from egis.process import hard_exit

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_UNREACHABLE = 0, 1, 2, 3


class UsageError(Exception):
    """argparse would exit(2) and print usage; we want one line and a typed exit code."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def actor() -> str:
    with contextlib.suppress(Exception):
        return f"cli:{getpass.getuser()}"
    return "cli"


def decimal_arg(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value.is_finite():
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An integer argument within [low, high] (every input has a documented bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {excerpt(text)}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is out of range ({low}-{high})")
        return value

    return parse


PORT = bounded_int(0, 65535)


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for field in ("data_dir", "temporal_port", "temporal_ui_port", "postgres_port", "metrics_port"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def _validation_message(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "__root__")
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


def run(coro_fn: Callable[[], Awaitable[int | None]]) -> int:
    """Run a command coroutine and map every failure to one line and an exit code."""
    try:
        return asyncio.run(coro_fn()) or EXIT_OK
    except KeyboardInterrupt:
        return 130
    except InvalidInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except EgisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except ValidationError as exc:
        print(f"error: {_validation_message(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ConnectionError, RuntimeError) as exc:
        if _is_unreachable(exc):
            print(f"error: cannot reach a server: {exc}", file=sys.stderr)
            return EXIT_UNREACHABLE
        return _unexpected(exc)
    except Exception as exc:
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """Anything we did not foresee is still one line (EGIS_DEBUG=1 shows the traceback)."""
    if os.environ.get("EGIS_DEBUG"):
        raise exc
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    print(f"error: unexpected {type(exc).__name__}: {first} (set EGIS_DEBUG=1 for details)", file=sys.stderr)
    return EXIT_REFUSED


def _is_unreachable(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, ConnectionError | OSError) or "connect" in text or "unavailable" in text


# ---------------------------------------------------------------- commands
async def cmd_dev_up(args: argparse.Namespace) -> int:
    from egis.stack.stack import Stack

    settings = settings_from(args)
    stack = Stack(settings, run_worker=not args.no_worker)
    await stack.start()
    print("Egis dev stack is up (Ctrl-C stops it)")
    if stack.ui_url:
        print(f"  Temporal web UI   {stack.ui_url}")
    print(f"  DATABASE_URL      {stack.database_url}")
    print(f"  TEMPORAL_ADDRESS  {stack.temporal_address}")
    print(f"  data dir          {stack.data_dir}  (logs in {stack.logs_dir})")
    print(f"  worker metrics    http://127.0.0.1:{settings.metrics_port}/metrics", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    watcher = asyncio.ensure_future(stack.wait_for_child_exit())
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({watcher, stopper}, return_when=asyncio.FIRST_COMPLETED)
    code = EXIT_OK
    if watcher in done:
        print(f"error: the {watcher.result()} process exited unexpectedly; stopping the stack", file=sys.stderr)
        code = EXIT_REFUSED
    watcher.cancel()
    stopper.cancel()
    print("stopping: worker, Temporal, PostgreSQL ...", flush=True)
    await stack.stop()
    print("stopped")
    return code


async def cmd_demo(args: argparse.Namespace) -> int:
    from egis.demo import run_demo

    return await run_demo(settings_from(args), keep=args.keep)


async def cmd_worker(args: argparse.Namespace) -> int:
    import worker

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await worker.run_worker(settings_from(args), stop)
    return EXIT_OK


async def _engine(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from egis.db.engine import make_engine

    return make_engine(settings_from(args).require_database_url(), pool_size=2)


async def cmd_db(args: argparse.Namespace) -> int:
    from egis.db import migrate

    engine = await _engine(args)
    try:
        if args.db_command == "upgrade":
            await migrate.upgrade(engine, args.revision)
        elif args.db_command == "downgrade":
            await migrate.downgrade(engine, args.revision)
        print(f"database at revision {await migrate.current_revision(engine) or 'base'}")
    finally:
        await engine.dispose()
    return EXIT_OK


async def cmd_bots(args: argparse.Namespace) -> int:
    from egis.client import EgisClient
    from egis.models import AgedPolicy, BotSpec

    async with EgisClient.from_settings(settings_from(args), temporal=False) as client:
        if args.bots_command == "create":
            aged = None
            if args.aged_max_age is not None:
                aged = AgedPolicy(
                    max_age_s=args.aged_max_age,
                    grace_s=args.aged_grace,
                    loss_step_pct=args.aged_loss_step,
                    max_loss_pct=args.aged_max_loss,
                    expire_s=args.aged_expire or args.aged_max_age + args.aged_grace + 24 * 3600,
                )
            bot = await client.create_bot(
                BotSpec(
                    name=args.name,
                    exchange=args.exchange,
                    account=args.account,
                    budget_usd=args.budget,
                    aged=aged,
                ),
                actor=actor(),
            )
            print(to_json(bot) if args.json else f"created bot {bot.name} on {bot.exchange}/{bot.account}")
            return EXIT_OK
        bots = await client.list_bots()
        if args.json:
            print(to_json(bots))
        else:
            rows = [b.model_dump() | {"aged": "yes" if b.aged else "no"} for b in bots]
            print(table(rows, ["name", "exchange", "account", "budget_usd", "aged"]))
    return EXIT_OK


async def cmd_budget(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args), temporal=False) as client:
        if args.set is not None:
            view = await client.set_budget(args.bot, args.set, actor=actor())
        else:
            view = await client.budget(args.bot)
    if args.json:
        print(to_json(view))
    else:
        print(
            table(
                [view.model_dump()],
                ["bot", "budget_usd", "reserved_usd", "available_usd", "reserving_positions"],
            )
        )
    return EXIT_OK


POSITION_COLUMNS = [
    "id",
    "bot",
    "exchange",
    "symbol",
    "side",
    "status",
    "quantity",
    "entry_price",
    "exit_price",
    "realized_pnl",
    "exit_reason",
    "workflow_id",
]


async def cmd_open(args: argparse.Namespace) -> int:
    from egis.client import EgisClient
    from egis.models import OpenPositionInput

    request = OpenPositionInput(bot=args.bot, symbol=args.symbol, side=args.side, usd=args.usd, ref=args.ref)
    async with EgisClient.from_settings(settings_from(args)) as client:
        view = await client.open_position(
            request, wait=None if args.no_wait else args.timeout, started_by=f"egis open ({actor()})"
        )
    if args.json:
        print(to_json(view))
    elif view.status == "open":
        print(
            f"opened {view.workflow_id}: {view.side} {cell(view.quantity)} {view.symbol} @ {cell(view.entry_price)} "
            f"(position {view.position_id})"
        )
    else:
        print(f"{view.workflow_id}: {view.status}" + (f" ({view.last_error})" if view.last_error else ""))
        return EXIT_OK if view.status == "opening" else EXIT_REFUSED
    return EXIT_OK


async def cmd_close(args: argparse.Namespace) -> int:
    from egis.client import EgisClient
    from egis.models import CloseRequest

    request = CloseRequest(reason=args.reason)
    async with EgisClient.from_settings(settings_from(args)) as client:
        result = await client.close_position(args.position, request, wait=not args.no_wait, timeout=args.timeout)
    if result is None:
        print(f"close requested for {args.position} (signal sent)")
        return EXIT_OK
    if args.json:
        print(to_json(result))
    else:
        line = f"{args.position}: {result.outcome} (status {result.status}"
        if result.exit_reason:
            line += f", {result.exit_reason} @ {cell(result.exit_price, 'unknown')}"
            line += f", pnl {cell(result.realized_pnl, 'unknown')}"
        line += f", orders sent {result.orders_sent})"
        if result.error_message:
            line += f": {result.error_message}"
        print(line)
    return EXIT_OK if result.status == "closed" else EXIT_REFUSED


async def cmd_positions(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args), temporal=False) as client:
        if args.orphans:
            rows = await client.orphans()
        else:
            rows = await client.positions(bot=args.bot, status=args.status, limit=args.limit)
    if args.json:
        print(to_json(rows))
    elif args.orphans:
        print(table(rows, ["exchange", "account", "symbol", "side", "quantity", "seen_at", "sync_run"]))
        print(
            "orphans: on the exchange, tracked by no live Egis position (never adopted or closed by Egis; "
            "opens in that symbol are refused). As of each account's last sync; `egis sync` refreshes."
        )
    else:
        print(table(rows, POSITION_COLUMNS))
    return EXIT_OK


async def cmd_show(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args)) as client:
        view = await client.position_state(args.position)
    print(to_json(view))
    return EXIT_OK


async def cmd_sync(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    if bool(args.exchange) != bool(args.account):
        raise InvalidInput("give both --exchange and --account, or neither (all live-exchange accounts)")
    async with EgisClient.from_settings(settings_from(args)) as client:
        reports = await client.sync(args.exchange, args.account)
    if args.json:
        print(to_json(reports))
        return EXIT_OK
    rows = [r.model_dump() | r.found | {"told": r.told, "unmanaged": len(r.unmanaged)} for r in reports]
    print(table(rows, ["exchange", "account", "ghost", "quantity_drift", "orphan", "told", "unmanaged", "run_id"]))
    for report in reports:
        for orphan in report.orphans:
            print(f"orphan on {report.exchange}/{report.account} (not adopted, not closed): {orphan}")
    return EXIT_OK


async def cmd_streams(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args), temporal=False) as client:
        rows = await client.streams()
    if args.json:
        print(to_json(rows))
        return EXIT_OK
    for row in rows:
        row["state"] = "connected" if row["connected"] else ("never started" if row["updated_at"] is None else "down")
    print(
        table(
            rows,
            ["exchange", "account", "state", "connected_since", "last_event_at", "reconnects", "events", "lag_ms"],
        )
    )
    for row in rows:
        if row["last_error"]:
            print(f"{row['exchange']}/{row['account']}: last error: {row['last_error']}")
    print("streams report ghosts and fills in real time; the exchange sync (REST, every 15 s) stays the safety net")
    return EXIT_OK


def _print_report(report: Any, as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(to_json(report))
        return
    for line in report.debug:
        print(f"debug: {line}")
    mode = report.mode.replace("_", " ")
    print(
        f"{report.kind} ({mode}), run {report.run_id}: "
        + (", ".join(f"{k} {v}" for k, v in report.found.items()) or "nothing found")
    )
    if report.rows:
        print(table(report.rows, columns))
    repairable = [r for r in report.rows if r.get("action", "would repair") in ("would close", "would repair")]
    if report.mode == "dry_run" and repairable:
        print(
            "dry run: nothing was changed"
            + (f" (repair with {'--fix' if 'reconcile' in report.kind else '--confirm'})")
        )
    elif report.mode == "dry_run" and report.rows:
        print("dry run: nothing was changed")
    if report.repaired:
        print(f"repaired {report.repaired}, audited; running workflows told: {report.told}")
    left = [r for r in report.rows if r.get("action") == "left open"]
    if left:
        print(f"left open: {len(left)} (the seed rule matched, but they are not proven phantoms; see REASON)")


async def cmd_reconcile(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args)) as client:
        report = await client.reconcile_paper(fix=args.fix, debug=args.debug, actor=actor())
    _print_report(report, args.json, ["kind", "position_id", "paper_id", "action"])
    return EXIT_OK


async def cmd_cleanup(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args)) as client:
        report = await client.cleanup_phantom_shorts(confirm=args.confirm, debug=args.debug, actor=actor())
    _print_report(
        report,
        args.json,
        [
            "short_id",
            "long_id",
            "bot",
            "symbol",
            "short_quantity",
            "entry_price",
            "size_usd",
            "gap_seconds",
            "action",
            "reason",
        ],
    )
    return EXIT_OK


async def cmd_schedules(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from egis import schedules
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args)) as client:
        temporal, queue = client.require_temporal(), client.settings.task_queue
        if args.schedules_command == "install":
            options = schedules.Options(
                sync_every=timedelta(seconds=args.sync_every),
                reconcile_fix=args.reconcile_fix,
                cleanup_confirm=args.cleanup_confirm,
            )
            for sid, outcome in await schedules.install(temporal, queue, await client.live_accounts(), options):
                print(f"{outcome:8} {sid}")
        elif args.schedules_command == "list":
            rows = await schedules.list_schedules(temporal, queue)
            print(to_json(rows) if args.json else table(rows, ["id", "paused", "runs", "last_run", "next_run", "note"]))
        else:
            sid = await schedules.control(temporal, queue, args.name, args.schedules_command)
            print(f"{args.schedules_command}: {sid}")
    return EXIT_OK


async def cmd_health(args: argparse.Namespace) -> int:
    from egis.client import EgisClient

    async with EgisClient.from_settings(settings_from(args)) as client:
        report = await client.health()
    print(to_json(report) if args.json else f"ok: worker on {report.worker_identity}, database {report.database}")
    return EXIT_OK


async def cmd_selftest(args: argparse.Namespace) -> int:
    from egis.db.engine import make_engine
    from egis.models import SYMBOL_RE, Exchange
    from egis.selftest import render, run_selftest

    if not SYMBOL_RE.fullmatch(args.symbol):
        raise InvalidInput(f"invalid symbol {excerpt(args.symbol)}: e.g. BTCUSDT")
    settings = settings_from(args)
    engine = make_engine(settings.require_database_url(), pool_size=2)
    try:
        report = await run_selftest(
            engine,
            settings.resolved_accounts_dir,
            args.account,
            exchange=Exchange(args.exchange) if args.exchange else None,
            symbol=args.symbol,
            allow_live=args.real_money,
            actor=actor(),
        )
    finally:
        await engine.dispose()
    print(to_json(report.as_dict()) if args.json else render(report))
    return EXIT_OK if report.ok else EXIT_REFUSED


async def cmd_accounts(args: argparse.Namespace) -> int:
    from datetime import UTC

    from egis.client import EgisClient
    from egis.errors import CredentialsMissing
    from egis.exchanges.accounts import load_account
    from egis.models import ACCOUNT_RE, Exchange
    from egis.selftest import account_exchange, account_mode, latest_selftest, render_rows, summary

    if not ACCOUNT_RE.fullmatch(args.account):
        raise InvalidInput(f"invalid account reference {excerpt(args.account)}")
    settings = settings_from(args)
    async with EgisClient.from_settings(settings, temporal=False) as client:
        bots = [b for b in await client.list_bots() if b.account == args.account]
        exchange = (
            Exchange(args.exchange)
            if args.exchange
            else account_exchange(args.account, settings.resolved_accounts_dir)
            or next((b.exchange for b in bots), None)
        )
        if exchange is None:
            raise InvalidInput(f"account {args.account!r}: no account file or bot names its exchange; give --exchange")
        async with client.engine.connect() as conn:
            run = await latest_selftest(conn, exchange, args.account)
    try:
        config = load_account(args.account, exchange, settings.resolved_accounts_dir)
        endpoint = {"local": f"local: {config.base_url}", "testnet": "testnet (sandbox)", "live": "LIVE"}[
            account_mode(config)
        ]
        if exchange is Exchange.PAPER:
            source = config.price_source.exchange.value if config.price_source else "binanceusdm"
            endpoint = f"paper: fills in the database at {source} prices"
        credentials = "set" if config.api_key is not None or exchange is Exchange.PAPER else "missing"
    except CredentialsMissing as exc:
        endpoint, credentials = "?", f"missing: {exc}"
    view = {
        "account": args.account,
        "exchange": exchange.value,
        "endpoint": endpoint,
        "credentials": credentials,
        "bots": [b.name for b in bots],
        "last_selftest": None
        if run is None
        else {
            "run_id": run["id"],
            "finished_at": run["finished_at"],
            "mode": run["mode"],
            "actor": run["actor"],
            "found": run["found"],
            "rows": run["report"],
        },
    }
    if args.json:
        print(to_json(view))
        return EXIT_OK
    print(f"account {args.account}")
    print(f"  exchange       {exchange.value}")
    print(f"  endpoint       {endpoint}")
    print(f"  credentials    {credentials}")
    print(f"  bots           {', '.join(view['bots']) or 'none'}")
    if run is None:
        hint = (
            ""
            if exchange is Exchange.PAPER
            else f": run `egis selftest --account {args.account}` before the first trade"
        )
        print(f"  last selftest  never{hint}")
        return EXIT_OK
    rows = run["report"] or []
    symbol = rows[0].get("symbol", "?") if rows else "?"
    print(
        f"  last selftest  run {run['id']}, {run['finished_at'].astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC, "
        f"{run['mode']}, {symbol}: " + summary(run["found"], bool(run["found"].get("left_flat")))
    )
    if rows and rows[0].get("stopped"):
        print(f"                 stopped early: {rows[0]['stopped']}")
    print()
    print(render_rows(rows))
    return EXIT_OK


async def cmd_replay(args: argparse.Namespace) -> int:
    from egis.replay import replay_cluster
    from egis.temporal import connect, resolve_connect_options

    settings = settings_from(args)
    options = resolve_connect_options(settings)
    from temporalio.service import RPCError, RPCStatusCode

    client = await connect(options)
    try:
        report = await replay_cluster(
            client, query=args.query, closed_within_hours=args.closed_within_hours, limit=args.limit
        )
    except RPCError as exc:
        if exc.status == RPCStatusCode.INVALID_ARGUMENT:
            raise InvalidInput(f"the visibility query was refused: {exc.message[:200]}") from None
        raise
    if args.json:
        print(
            to_json(
                {
                    "ok": report.ok,
                    "query": report.query,
                    "replayed": len(report.outcomes),
                    "truncated": report.truncated,
                    "by_type": report.rows(),
                    "failures": [vars(o) for o in report.failures],
                }
            )
        )
        return EXIT_OK if report.ok else EXIT_REFUSED
    print(f"replaying against the code on disk: {options.describe()}")
    print(f"query: {report.query}")
    if report.outcomes:
        print(table(report.rows(), ["workflow_type", "replayed", "ok", "nondeterminism", "failed"]))
    if report.truncated:
        print(f"note: stopped at --limit {report.limit} histories; raise it to replay more")
    for failure in report.failures:
        print(failure.line())
    if not report.outcomes:
        print("nothing to replay: no workflow matched")
    elif report.ok:
        print(f"OK: {len(report.outcomes)} histories replay against this code")
    else:
        print(f"FAILED: {len(report.failures)} of {len(report.outcomes)} histories do not replay against this code")
    return EXIT_OK if report.ok else EXIT_REFUSED


def cmd_simulator(args: argparse.Namespace) -> int:
    from egis.simulator.server import run_standalone

    run_standalone(args.exchange, args.host, args.port, synthetic_markets=args.synthetic_markets)
    return EXIT_OK


# ---------------------------------------------------------------- parser
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, help="embedded stack data dir (default ./.egis, env EGIS_DATA_DIR)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="egis", description="Egis: trading-position lifecycles as durable Temporal workflows.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    dev = sub.add_parser("dev", help="the embedded development stack")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True, parser_class=_Parser)
    up = dev_sub.add_parser("up", help="start PostgreSQL, Temporal (web UI) and the worker; Ctrl-C stops all")
    _common(up)
    up.add_argument("--temporal-port", type=PORT, help="Temporal gRPC port (default 7233)")
    up.add_argument("--ui-port", dest="temporal_ui_port", type=PORT, help="Temporal web UI port (default 8233)")
    up.add_argument("--pg-port", dest="postgres_port", type=PORT, help="PostgreSQL port (default 55432)")
    up.add_argument("--metrics-port", type=PORT, help="worker /metrics port (default 9464)")
    up.add_argument("--no-worker", action="store_true", help="start the servers only")
    up.set_defaults(func=cmd_dev_up)

    demo = sub.add_parser("demo", help="bring the stack up, replay the seed incidents, print what happened")
    _common(demo)
    demo.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    demo.add_argument("--temporal-port", type=PORT)
    demo.add_argument("--ui-port", dest="temporal_ui_port", type=PORT)
    demo.add_argument("--pg-port", dest="postgres_port", type=PORT)
    demo.add_argument("--metrics-port", type=PORT)
    demo.set_defaults(func=cmd_demo)

    wk = sub.add_parser("worker", help="run the worker (same as python worker.py)")
    _common(wk)
    wk.set_defaults(func=cmd_worker)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, parser_class=_Parser)
    for name, default in (("upgrade", "head"), ("downgrade", "-1"), ("current", None)):
        p = db_sub.add_parser(name)
        _common(p)
        if default is not None:
            p.add_argument("revision", nargs="?", default=default)
        p.set_defaults(func=cmd_db)

    bots = sub.add_parser("bots", help="create and list bots")
    bots_sub = bots.add_subparsers(dest="bots_command", required=True, parser_class=_Parser)
    create = bots_sub.add_parser("create", help="create a bot")
    _common(create)
    create.add_argument("name")
    create.add_argument("--exchange", required=True, choices=["binanceusdm", "bybit", "paper"])
    create.add_argument("--account", required=True, help="account reference (credentials are looked up by it)")
    create.add_argument("--budget", required=True, type=decimal_arg, help="budget in USD")
    create.add_argument("--aged-max-age", type=int, help="aged policy: seconds before a position counts as aged")
    create.add_argument("--aged-grace", type=int, default=0, help="aged policy: grace phase length, seconds")
    create.add_argument("--aged-loss-step", type=decimal_arg, default=Decimal("0.5"), help="%% more loss per hour")
    create.add_argument("--aged-max-loss", type=decimal_arg, default=Decimal("5"), help="loss cap, %%")
    create.add_argument("--aged-expire", type=int, help="age (seconds) at which to close at market")
    create.add_argument("--json", action="store_true")
    create.set_defaults(func=cmd_bots)
    ls = bots_sub.add_parser("list", help="list bots")
    _common(ls)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_bots)

    budget = sub.add_parser("budget", help="a bot's budget, computed from positions")
    _common(budget)
    budget.add_argument("--bot", required=True)
    budget.add_argument("--set", type=decimal_arg, help="change the budget (USD)")
    budget.add_argument("--json", action="store_true")
    budget.set_defaults(func=cmd_budget)

    open_ = sub.add_parser("open", help="open a position (starts its workflow)")
    _common(open_)
    open_.add_argument("--bot", required=True)
    open_.add_argument("--symbol", required=True, help="e.g. BTCUSDT")
    open_.add_argument("--side", required=True, choices=["long", "short"])
    open_.add_argument("--usd", required=True, type=decimal_arg, help="size in USD (the budget it reserves)")
    open_.add_argument("--ref", required=True, help="your reference; a (bot, ref) pair opens at most one position")
    open_.add_argument("--no-wait", action="store_true", help="return once started")
    open_.add_argument("--timeout", type=bounded_int(1, 3600), default=60, help="seconds to wait for the fill (1-3600)")
    open_.add_argument("--json", action="store_true")
    open_.set_defaults(func=cmd_open)

    close = sub.add_parser("close", help="close a position (verified on the exchange first)")
    _common(close)
    close.add_argument("position", help="workflow id (pos-<bot>-<ref>) or position id")
    close.add_argument("--reason", default="manual")
    close.add_argument("--no-wait", action="store_true", help="send the close signal and return")
    close.add_argument(
        "--timeout",
        type=bounded_int(1, 3600),
        default=120,
        help="seconds to wait for the outcome (1-3600); the close goes on after the wait ends",
    )
    close.add_argument("--json", action="store_true")
    close.set_defaults(func=cmd_close)

    pos = sub.add_parser("positions", help="positions from the database (the source of truth)")
    _common(pos)
    pos.add_argument("--bot")
    pos.add_argument("--status", choices=["opening", "open", "closing", "closed", "failed"])
    pos.add_argument("--limit", type=bounded_int(1, 10000), default=100, help="at most this many rows (1-10000)")
    pos.add_argument(
        "--orphans", action="store_true", help="positions the exchange holds that Egis does not (from the last sync)"
    )
    pos.add_argument("--json", action="store_true")
    pos.set_defaults(func=cmd_positions)

    show = sub.add_parser("show", help="what a position's workflow believes (query `state`)")
    _common(show)
    show.add_argument("position")
    show.set_defaults(func=cmd_show)

    sync = sub.add_parser("sync", help="exchange sync now: ghosts, orphans, quantity drift (one request per account)")
    _common(sync)
    sync.add_argument("--exchange", choices=["binanceusdm", "bybit"])
    sync.add_argument("--account")
    sync.add_argument("--json", action="store_true")
    sync.set_defaults(func=cmd_sync)

    streams = sub.add_parser("streams", help="each live account's private stream: connected, last event, lag")
    _common(streams)
    streams.add_argument("--json", action="store_true")
    streams.set_defaults(func=cmd_streams)

    reconcile = sub.add_parser("reconcile", help="reconciliation jobs")
    reconcile_sub = reconcile.add_subparsers(dest="reconcile_command", required=True, parser_class=_Parser)
    paper = reconcile_sub.add_parser("paper", help="positions vs paper_positions (DB only); dry run by default")
    _common(paper)
    paper.add_argument("--fix", action="store_true", help="repair every mismatch (audited)")
    paper.add_argument("--debug", action="store_true", help="print the reasoning for each row")
    paper.add_argument("--json", action="store_true")
    paper.set_defaults(func=cmd_reconcile)

    cleanup = sub.add_parser("cleanup", help="data cleanup jobs")
    cleanup_sub = cleanup.add_subparsers(dest="cleanup_command", required=True, parser_class=_Parser)
    shorts = cleanup_sub.add_parser("phantom-shorts", help="seed 000's phantom SHORTs; dry run by default")
    _common(shorts)
    shorts.add_argument("--confirm", action="store_true", help="close the matches (phantom_cleanup; rows kept)")
    shorts.add_argument("--debug", action="store_true", help="say for each candidate why it matched or not")
    shorts.add_argument("--json", action="store_true")
    shorts.set_defaults(func=cmd_cleanup)

    sched = sub.add_parser("schedules", help="Temporal Schedules for the maintenance workflows")
    sched_sub = sched.add_subparsers(dest="schedules_command", required=True, parser_class=_Parser)
    install = sched_sub.add_parser("install", help="create or update (idempotent)")
    _common(install)
    install.add_argument(
        "--sync-every", type=bounded_int(1, 86400), default=15, help="seconds between exchange syncs (1-86400)"
    )
    install.add_argument("--reconcile-fix", action="store_true", help="scheduled reconciliation repairs")
    install.add_argument("--cleanup-confirm", action="store_true", help="scheduled cleanup closes phantoms")
    install.set_defaults(func=cmd_schedules)
    listing = sched_sub.add_parser("list")
    _common(listing)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=cmd_schedules)
    for action in ("pause", "unpause", "trigger"):
        p = sched_sub.add_parser(action)
        _common(p)
        p.add_argument("name", help="schedule id, or its suffix (e.g. reconcile-paper)")
        p.set_defaults(func=cmd_schedules)

    selftest = sub.add_parser(
        "selftest",
        help="check on a testnet account, with real minimum-size orders, that the venue behaves as Egis assumes",
    )
    _common(selftest)
    selftest.add_argument("--account", required=True, help="account reference (its file or EGIS_ACCOUNT_* variables)")
    selftest.add_argument("--symbol", default="BTCUSDT", help="the market it trades in (default BTCUSDT)")
    selftest.add_argument("--exchange", choices=["binanceusdm", "bybit"], help="when the account file does not name it")
    selftest.add_argument(
        "--i-understand-this-trades-real-money",
        dest="real_money",
        action="store_true",
        help="allow a live account (no sandbox, no base_url): the selftest places real orders",
    )
    selftest.add_argument("--json", action="store_true")
    selftest.set_defaults(func=cmd_selftest)

    accounts = sub.add_parser("accounts", help="exchange accounts")
    accounts_sub = accounts.add_subparsers(dest="accounts_command", required=True, parser_class=_Parser)
    show_account = accounts_sub.add_parser("show", help="an account: endpoint, bots, its last selftest")
    _common(show_account)
    show_account.add_argument("account")
    show_account.add_argument("--exchange", choices=["binanceusdm", "bybit", "paper"])
    show_account.add_argument("--json", action="store_true")
    show_account.set_defaults(func=cmd_accounts)

    simulator = sub.add_parser("simulator", help="run a local exchange simulator (tests, demo; never production)")
    simulator.add_argument("--exchange", required=True, choices=["binanceusdm", "bybit"])
    simulator.add_argument("--port", type=PORT, default=8901)
    simulator.add_argument("--host", default="127.0.0.1")
    simulator.add_argument(
        "--synthetic-markets",
        type=bounded_int(0, 100_000),
        default=0,
        metavar="N",
        help="also list N made-up USDT perpetuals S0001USDT... (many symbols / positions)",
    )
    simulator.set_defaults(func=cmd_simulator, sync=True)

    replay = sub.add_parser(
        "replay", help="deploy gate: replay the cluster's running (and recently closed) workflows against this code"
    )
    _common(replay)
    replay.add_argument(
        "--query",
        help="visibility query instead of the default scope (running, or closed within --closed-within-hours), "
        "e.g. \"WorkflowId = 'pos-alpha-sig-42'\"; always limited to Egis's workflow types",
    )
    replay.add_argument(
        "--closed-within-hours",
        type=bounded_int(0, 10000),
        default=24,
        help="also replay workflows closed within this many hours (default 24)",
    )
    replay.add_argument(
        "--limit", type=bounded_int(1, 100000), default=1000, help="at most this many histories (default 1000)"
    )
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(func=cmd_replay)

    health = sub.add_parser("health", help="run a health workflow through the worker")
    _common(health)
    health.add_argument("--json", action="store_true")
    health.set_defaults(func=cmd_health)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if getattr(args, "sync", False):
        return args.func(args)
    return run(lambda: args.func(args))


def entrypoint() -> None:
    """The `egis` console script and `python starter.py`."""
    hard_exit(main())


if __name__ == "__main__":
    entrypoint()
