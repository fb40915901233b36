"""`make ui-check`: the Temporal web UI as an operator's console, checked in headless Chromium.

    python -m uicheck [--out docs/ui] [--keep]

Starts a throwaway embedded stack (PostgreSQL, the Temporal dev server with its web UI, the
worker) on free ports with the exchange simulator, creates bots `alpha` (Bybit) and `beta`
(paper), opens a few positions through `egis.client` and closes one, then in Chromium:

1. filters the workflow list by `BotId="alpha"`: alpha's positions are listed, beta's are not;
2. opens `pos-alpha-sig-42`: its static summary (`alpha: long BTCUSDT $100, ref sig-42`), its
   static details and its current details (status, quantity, entry price as a plain decimal,
   what it waits for) are shown;
3. opens the event history: the activities carry their summaries;
4. closes `pos-alpha-sig-43` from the UI (More Actions > Send an Update > `request_close`,
   `{"reason": "manual"}`) and sees it completed, its details saying closed, exit reason manual;

and saves a screenshot of each step under `--out` (default docs/ui). Exits 0 when every check
holds, 1 with one line naming what the page did not show, 2 when the check could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

from egis.client import EgisClient
from egis.config import Settings
from egis.exchanges.accounts import AccountConfig, PriceSource, write_account
from egis.models import BotSpec, CloseRequest, Exchange, OpenPositionInput
from egis.process import hard_exit
from egis.simulator.server import start_simulator
from egis.stack.processes import free_port
from egis.stack.stack import Stack
from uicheck.cdp import Browser, BrowserError, Page

D = Decimal
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "docs" / "ui"
BYBIT_KEY = "uicheck-bybit-key"
BYBIT_SECRET = "uicheck-secret"
WATCHED = "pos-alpha-sig-42"
CLOSED_FROM_UI = "pos-alpha-sig-43"
SUMMARY = "alpha: long BTCUSDT $100, ref sig-42"


class CheckFailed(Exception):
    """The UI did not show what an operator needs."""


async def seed(client: EgisClient) -> dict[str, str]:
    """Bots and positions; returns workflow id -> run id of the positions opened."""
    await client.create_bot(
        BotSpec(name="alpha", exchange=Exchange.BYBIT, account="bybit-main", budget_usd=D(1000)), actor="uicheck"
    )
    await client.create_bot(
        BotSpec(name="beta", exchange=Exchange.PAPER, account="paper-1", budget_usd=D(1000)), actor="uicheck"
    )
    requests = [
        OpenPositionInput(bot="alpha", symbol="BTCUSDT", side="long", usd=D(100), ref="sig-42"),
        OpenPositionInput(bot="alpha", symbol="ETHUSDT", side="short", usd=D(150), ref="sig-43"),
        OpenPositionInput(bot="alpha", symbol="DOGEUSDT", side="long", usd=D(50), ref="sig-44"),
        OpenPositionInput(bot="beta", symbol="BTCUSDT", side="long", usd=D(200), ref="p-1"),
    ]
    for request in requests:
        view = await client.open_position(request, wait=60, started_by="uicheck")
        if view.status != "open":
            raise RuntimeError(f"could not open {view.workflow_id}: {view.status} {view.last_error or ''}")
    result = await client.close_position("pos-alpha-sig-44", CloseRequest(reason="manual"))
    if result is None or result.status != "closed":
        raise RuntimeError(f"could not close pos-alpha-sig-44: {result}")
    temporal = client.require_temporal()
    runs = {}
    for request in requests:
        workflow_id = f"pos-{request.bot}-{request.ref}"
        runs[workflow_id] = (await temporal.get_workflow_handle(workflow_id).describe()).run_id
    return runs


def contains(*texts: str) -> str:
    """A JavaScript predicate: the page's text contains every one of `texts`."""
    checks = " && ".join(f"t.includes({text!r})" for text in texts)
    return f"(() => {{ const t = document.body ? document.body.innerText : ''; return {checks}; }})()"


async def check_ui(page: Page, ui: str, runs: dict[str, str], out: Path) -> list[Path]:
    shots: list[Path] = []
    namespace = "default"

    # 1. the list, filtered by bot
    query = quote('BotId="alpha"')
    await page.goto(f"{ui}/namespaces/{namespace}/workflows?query={query}")
    try:
        await page.wait_for(contains(WATCHED, "pos-alpha-sig-43", "pos-alpha-sig-44"), "alpha's positions in the list")
    except BrowserError as exc:
        raise CheckFailed(f"filtering by BotId: {exc}") from None
    if "pos-beta-p-1" in await page.text():
        raise CheckFailed('filtering by BotId="alpha" still lists beta\'s position pos-beta-p-1')
    await asyncio.sleep(1.0)  # let the table settle (counts, status chips)
    shots.append(await page.screenshot(out / "1-positions-of-bot-alpha.png"))

    # 2. one position: its summary and its details (the workflow page's User Metadata tab)
    run_id = runs[WATCHED]
    await page.goto(f"{ui}/namespaces/{namespace}/workflows/{WATCHED}/{run_id}/history")
    try:
        await page.click_text("User Metadata", "the workflow page's User Metadata tab")
        await page.wait_for_text(["Summary", SUMMARY], "the position's static summary")
        await page.wait_for_text(["Details", "started by", "bybit-main"], "the position's static details")
        await page.wait_for_text(
            ["Current Details", "status", "open", "entry price", ": 60000", "Waiting for", "request_close"],
            "the position's current details (status, entry price as a plain decimal, what it waits for)",
        )
    except BrowserError as exc:
        raise CheckFailed(f"{WATCHED}: {exc}") from None
    if "E+" in await page.all_text():
        raise CheckFailed(f"{WATCHED}: a price is shown in exponent notation (6E+4)")
    await asyncio.sleep(1.0)
    shots.append(await page.screenshot(out / "2-position-user-metadata.png"))

    # 3. the event history: activities carry their summaries
    try:
        await page.click_text("Event History", "the Event History tab")
        await page.click_text("Compact", "the event history's compact view")
        await page.wait_for_text(["check, reserve, send, record"], "the open activity's summary")
    except BrowserError as exc:
        raise CheckFailed(f"{WATCHED}: {exc}") from None
    await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
    await asyncio.sleep(1.0)
    shots.append(await page.screenshot(out / "3-position-event-history.png"))

    # 4. close another position from the UI, with the validated request_close update
    await page.goto(f"{ui}/namespaces/{namespace}/workflows/{CLOSED_FROM_UI}/{runs[CLOSED_FROM_UI]}/history")
    pick = """(() => {
        const option = [...document.querySelectorAll('dialog[open] [role=listbox] [role=option]')]
            .find(o => o.textContent.includes('request_close'));
        if (!option) return false;
        option.click();
        return true;
    })()"""
    try:
        await page.click_text("More Actions", "the More Actions menu")
        await page.click_text(
            "Send an Update", "Send an Update in More Actions", selector="[role=menuitem], li, button"
        )
        await page.wait_for(pick, "request_close in the update picker (the workflow's update definitions)")
        await page.wait_for_text(["Close the position and wait for the outcome"], "the update's description")
        await page.type_into("dialog[open] .cm-content", '{"reason": "manual"}', "the update's Data editor")
        await asyncio.sleep(0.5)
        shots.append(await page.screenshot(out / "4-close-with-request-close.png"))
        await page.click_text(
            "Submit", "the enabled Submit button", selector="dialog[open] button[type=submit]:not([disabled])"
        )
        await page.goto(f"{ui}/namespaces/{namespace}/workflows/{CLOSED_FROM_UI}/{runs[CLOSED_FROM_UI]}/history")
        await page.wait_for(contains("COMPLETED"), f"{CLOSED_FROM_UI} to complete after the update", timeout=60)
        await page.click_text("User Metadata", "the User Metadata tab")
        await page.wait_for_text(
            ["closed", "exit reason", "manual", "nothing: the position is final"], "the closed position's details"
        )
    except BrowserError as exc:
        raise CheckFailed(f"closing {CLOSED_FROM_UI} from the UI: {exc}") from None
    await asyncio.sleep(1.0)
    shots.append(await page.screenshot(out / "5-closed-from-the-ui.png"))
    return shots


async def run(out: Path, keep: bool) -> int:
    root = Path(tempfile.mkdtemp(prefix="egis-uicheck-"))
    settings = Settings(
        data_dir=root / ".egis",
        temporal_port=free_port(),
        temporal_ui_port=free_port(),
        postgres_port=free_port(),
        metrics_port=0,
        sdk_metrics_port=0,
        accounts_dir=root / "accounts",
        log_level="WARNING",
    ).model_copy(update={"database_url": None, "temporal_address": None})
    sim = await start_simulator(api_keys={BYBIT_KEY: BYBIT_SECRET})  # the simulator refuses unknown keys (10003)
    stack = Stack(
        settings,
        worker_log=root / "worker.log",
        worker_env={"EGIS_METRICS_PORT": "0", "EGIS_SDK_METRICS_PORT": "0", "EGIS_AUTO_SCHEDULES": "0"},
    )
    try:
        write_account(
            settings.resolved_accounts_dir,
            "bybit-main",
            AccountConfig(exchange=Exchange.BYBIT, api_key=BYBIT_KEY, secret=BYBIT_SECRET, base_url=sim.base_url),
        )
        write_account(
            settings.resolved_accounts_dir,
            "paper-1",
            AccountConfig(
                exchange=Exchange.PAPER, price_source=PriceSource(exchange=Exchange.BINANCEUSDM, base_url=sim.base_url)
            ),
        )
        print("ui-check: starting a throwaway stack (PostgreSQL, Temporal + web UI, worker) ...", flush=True)
        await stack.start()
        effective = settings.model_copy(
            update={"database_url": stack.database_url, "temporal_address": stack.temporal_address}
        )
        async with EgisClient.from_settings(effective) as client:
            runs = await seed(client)
        ui = stack.ui_url
        assert ui is not None
        print(f"ui-check: web UI {ui}; positions {', '.join(sorted(runs))}", flush=True)
        started = time.monotonic()
        async with Browser.launch() as browser:
            page = await browser.page()
            try:
                shots = await check_ui(page, ui, runs, out)
            except CheckFailed as exc:
                await page.screenshot(out / "failed.png")
                print(f"ui-check FAILED: {exc} (screenshot {out / 'failed.png'})", file=sys.stderr)
                return 1
        for shot in shots:
            print(f"ui-check: saved {shot}")
        print(f"ui-check OK: the UI shows the summary and details of {WATCHED} ({time.monotonic() - started:.0f}s)")
        if keep:
            print("ui-check: --keep: the stack runs until Ctrl-C", flush=True)
            await asyncio.Event().wait()
        return 0
    except BaseException:
        log = root / "worker.log"
        if log.exists():
            tail = log.read_text(errors="replace").splitlines()[-30:]
            print("worker log (last lines):", *tail, sep="\n  ", file=sys.stderr)
        raise
    finally:
        await stack.stop()
        await sim.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m uicheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the screenshots go (default docs/ui)")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards (Ctrl-C stops it)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        code = asyncio.run(run(args.out, args.keep))
    except KeyboardInterrupt:
        code = 130
    except BrowserError as exc:
        print(f"ui-check could not run: {exc}", file=sys.stderr)
        code = 2
    except Exception as exc:
        logging.getLogger("egis.uicheck").exception("ui-check could not run")
        print(f"ui-check could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        code = 2
    hard_exit(code)


if __name__ == "__main__":
    main()
