"""`egis selftest`: prove on the operator's own testnet account that the venue behaves as Egis assumes.

Egis's safety rests on assumptions about each venue (the exchange-fidelity notes list them with their
sources; several could not be confirmed anywhere but on a real account). The selftest runs a
short, bounded script of real calls through the same gateway Egis uses (`CcxtGateway`: its back-off,
its clock, its parsing), with the smallest quantities the market allows, and reports one row per
assumption: what Egis assumes, what the venue answered, holds / differs / could not check, and what
Egis does about a difference.

- `judge()` is pure: (check, exchange, facts) -> verdict, what Egis does, whether Egis handles it.
- `Selftest` is the script; each step records the facts of its check(s).
- `run_selftest()` refuses before any request on a live account without `allow_live`, refuses after
  one positions read on an account holding a position Egis does not know (or any position in the
  symbol: the test orders would net against it), stores the report in `maintenance_runs` (kind
  "selftest", scope "<exchange>/<account>") and ALWAYS leaves the symbol flat: whatever failed, it
  re-reads the exchange and closes (reduce-only) what the selftest opened, and says so if it could not.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from egis.db.maintenance import account_positions, finish_run, latest_runs, start_run
from egis.errors import EgisError, InvalidInput
from egis.exchanges.accounts import AccountConfig, load_account
from egis.exchanges.base import ExchangeCallError, OrderRequest
from egis.exchanges.ccxt_gateway import CcxtGateway
from egis.exchanges.registry import build_gateway
from egis.models import Exchange, Intent, OrderSide, Side, fixed
from egis.rules.classify import classify
from egis.rules.sizing import MarketRules
from egis.rules.submission import LOOKUP_LAG
from egis.rules.sync import TheirPosition, untracked

KIND = "selftest"
HOLDS, DIFFERS, UNCHECKED = "holds", "differs", "could not check"
LIVE_FLAG = "--i-understand-this-trades-real-money"

CLOCK_TOLERANCE_MS = 1000
"""A venue clock further off than this is reported (both venues refuse requests 5 s off by default)."""
HISTORY_WAIT_SECONDS = 10.0
"""How long the closing fills may take to show in the trade history."""
LOOKUP_MARGIN_SECONDS = 2.0
"""How long past the venue's look-up window the selftest keeps looking for its order."""
FLATTEN_SECONDS = 180.0
"""How long the final clean-up may wait (a back-off the venue imposed must end first)."""
FLATTEN_ATTEMPTS = 4
NOTIONAL_MARGIN = Decimal("1.1")
"""An open is sized 10 % above the minimum notional, so a price move cannot push it below."""

CHEAPER_MARKETS = ("DOGEUSDT", "XRPUSDT", "ADAUSDT", "TRXUSDT", "1000PEPEUSDT")
"""Markets to suggest for the minimum checks when the chosen one cannot run them."""

CHECKS: tuple[str, ...] = (
    "clock",
    "position_mode",
    "flat_read",
    "open_readback",
    "market_answer",
    "lookup_after_fill",
    "reuse_filled_id",
    "unknown_id_lookup",
    "reduce_only_larger",
    "reduce_only_flat",
    "min_refusal",
    "reduce_only_min_exempt",
    "trade_history",
    "history_window",
    "rate_limit_headers",
    "left_flat",
)
"""Every row of a report, in this order."""

TRADING_CHECKS = frozenset(
    {
        "open_readback",
        "market_answer",
        "lookup_after_fill",
        "reuse_filled_id",
        "reduce_only_larger",
        "reduce_only_flat",
        "min_refusal",
        "reduce_only_min_exempt",
        "trade_history",
    }
)

BN, BY = Exchange.BINANCEUSDM, Exchange.BYBIT

_ASSUMPTIONS: dict[str, str | dict[Exchange, str]] = {
    "clock": f"the venue's clock is within {CLOCK_TOLERANCE_MS} ms of ours",
    "position_mode": {
        BN: "one-way mode (GET /fapi/v1/positionSide/dual: false)",
        BY: "one-way mode (no mode query: position rows carry positionIdx 0)",
    },
    "flat_read": {
        BN: "a flat symbol reads flat: no row in GET /fapi/v3/positionRisk",
        BY: "a flat symbol reads flat: one row, side '' and size 0",
    },
    "open_readback": "a market open reads back: long, the filled quantity, entry = fill price",
    "market_answer": {
        BN: "a MARKET order answers FILLED with executedQty (newOrderRespType RESULT)",
        BY: "order/create answers ids only; the fill is read by orderLinkId",
    },
    "lookup_after_fill": {
        BN: "the order is found by client id at once (look-up window 5 s)",
        BY: "the order is found by orderLinkId within the look-up window (30 s)",
    },
    "reuse_filled_id": {
        BN: "a filled order's client id is accepted again (unique among open orders only)",
        BY: "a used orderLinkId is refused: 110072",
    },
    "unknown_id_lookup": {
        BN: "an unknown client id answers -2013 Order does not exist",
        BY: "an unknown orderLinkId answers empty lists (realtime, history)",
    },
    "reduce_only_larger": "a reduce-only order larger than the position is capped to it (never flips)",
    "reduce_only_flat": {
        BN: "a reduce-only order on a flat position is refused: -2022",
        BY: "a reduce-only order on a flat position is refused: 110017",
    },
    "min_refusal": {
        BN: "an open below the market minimum is refused (-4164 notional)",
        BY: "an open below the market minimum is refused (110094 notional, 10001 size)",
    },
    "reduce_only_min_exempt": {
        BN: "reduce-only orders are exempt from the minimum notional",
        BY: "closing orders are exempt from the minimum notional",
    },
    "trade_history": "the closing fills are in the trade history within 10 s",
    "history_window": "trade history refuses a window over 7 days",
    "rate_limit_headers": {
        BN: "X-MBX-USED-WEIGHT-1M on answers, X-MBX-ORDER-COUNT-10S on order answers",
        BY: "X-Bapi-Limit, X-Bapi-Limit-Status, X-Bapi-Limit-Reset-Timestamp on answers",
    },
    "left_flat": "the selftest leaves the symbol flat",
}

_HEADERS = {
    BN: {"any": ("x-mbx-used-weight-1m",), "order": ("x-mbx-order-count-10s",)},
    BY: {"any": ("x-bapi-limit", "x-bapi-limit-status", "x-bapi-limit-reset-timestamp"), "order": ()},
}
_UNKNOWN_OUTCOME = frozenset(
    {"OperationFailed", "NetworkError", "RequestTimeout", "ExchangeNotAvailable", "RateLimitExceeded", "InvalidNonce"}
)
"""Errors after which nobody knows what the venue did (or that say nothing about the assumption)."""


def assumption(check: str, exchange: Exchange) -> str:
    text = _ASSUMPTIONS[check]
    return text if isinstance(text, str) else text[exchange]


# ---------------------------------------------------------------- rows and the pure verdicts
@dataclass
class Row:
    check: str
    assumption: str
    answer: str
    verdict: str
    egis_does: str = ""
    handled: bool = True  # False: a difference Egis does not handle (the worker warns about it)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Judgement:
    verdict: str
    egis_does: str = ""
    handled: bool = True


def _holds() -> Judgement:
    return Judgement(HOLDS)


def _differs(egis_does: str, handled: bool = True) -> Judgement:
    return Judgement(DIFFERS, egis_does if handled else f"not handled: {egis_does}", handled)


def _code_text(facts: Mapping[str, Any]) -> str:
    return str(facts.get("code") or (facts.get("names") or ["?"])[0])


def _close_refusal(exchange: Exchange, facts: Mapping[str, Any], what: str) -> Judgement:
    """A reduce-only close refused with a code Egis may or may not read as "check the position"."""
    found = classify(exchange.value, facts.get("names") or [], facts.get("code"), "close")
    code = _code_text(facts)
    if found.outcome.value == "verify":
        return _differs(f"Egis classifies {code} on a close as VERIFY ({found.rule}) and reads the position again")
    return _differs(
        f"{what}: Egis takes {code} on a close for {found.outcome.value} ({found.reason}); the close stops and "
        "waits for an operator",
        handled=False,
    )


def judge(check: str, exchange: Exchange, facts: Mapping[str, Any]) -> Judgement:
    """Holds or differs, for one check's facts; and what Egis does about a difference. Pure."""
    exchange = Exchange(exchange)
    if check == "clock":
        if abs(int(facts["offset_ms"])) <= CLOCK_TOLERANCE_MS:
            return _holds()
        return _differs(
            "Egis learns the venue's clock when a gateway starts and after -1021 / 10002, and signs with it"
        )
    if check == "position_mode":
        if not facts["hedge"]:
            return _holds()
        return _differs(
            "Egis refuses opens on a hedge-mode account (switch it to one-way mode); it reads hedge rows, so a "
            "position it holds never reads as a ghost"
        )
    if check == "flat_read":
        if not facts["parsed_flat"]:
            return _differs("the gateway reads a position where the venue shows none", handled=False)
        if facts["documented_shape"]:
            return _holds()
        return _differs("Egis reads every row of size 0 as flat")
    if check == "open_readback":
        same = (
            facts["side"] == "long"
            and facts["quantity"] is not None
            and facts["quantity"] == facts["filled"]
            and facts["entry"] is not None
            and facts["fill_price"] is not None
            and abs(facts["entry"] - facts["fill_price"]) <= facts["fill_price"] * Decimal("0.001")
        )
        if same:
            return _holds()
        return _differs(
            "Egis records an open from its order's fill and expects the position to read the same; the exchange "
            "sync would report a drift or a ghost",
            handled=False,
        )
    if check == "market_answer":
        if exchange is BN:
            if facts.get("status") == "FILLED" and (facts.get("executed") or 0) > 0:
                return _holds()
            return _differs(
                "Egis looks the order up by client id until it settles, never records a zero fill "
                "(egis/rules/submission.py)"
            )
        if facts.get("order_id"):
            return _holds()
        return _differs("Egis reads the fill by orderLinkId whatever the answer says")
    if check == "lookup_after_fill":
        after, window = facts.get("found_after_ms"), int(facts["window_ms"])
        if after is not None and after <= window:
            return _holds()
        return _differs(
            f"Egis counts 'not found' as absence {window / 1000:g} s after a send and may then send the order again",
            handled=False,
        )
    if check == "reuse_filled_id":
        accepted = bool(facts["accepted"])
        if exchange is BN and accepted:
            return _holds()
        if exchange is BY and not accepted and str(facts.get("code")) == "110072":
            return _holds()
        if accepted:
            return _differs(
                "Egis never sends an order again before a look-up by client id proves it absent, so an accepted "
                "reuse cannot double an order"
            )
        return _differs(
            "Egis never sends an order again blind (it looks it up by client id first; a duplicate-id refusal is "
            "VERIFY), so a refused reuse changes nothing"
        )
    if check == "unknown_id_lookup":
        if not facts["found"] and not facts.get("error"):
            return _holds()
        return _differs(
            "a look-up of an order the venue never took must prove it absent; Egis would retry it instead",
            handled=False,
        )
    if check == "reduce_only_larger":
        outcome = facts["outcome"]
        if outcome == "capped":
            return _holds()
        if outcome == "refused":
            return _close_refusal(exchange, facts, "a close of more than the position (it shrank meanwhile)")
        if outcome == "flipped":
            return _differs(
                "a close order opened the other side; Egis's intent rule refuses to record it", handled=False
            )
        return _differs("the order was accepted but the position did not change", handled=False)
    if check == "reduce_only_flat":
        if facts["accepted"]:
            return _differs("a reduce-only order opened a position", handled=False)
        expected = {BN: "-2022", BY: "110017"}[exchange]
        if str(facts.get("code")) == expected:
            return _holds()
        return _close_refusal(exchange, facts, "a close of a position that is gone")
    if check == "min_refusal":
        if not facts["accepted"]:
            return _holds()
        return _differs(
            "Egis checks the published minimums itself before sending, so a venue that accepts less changes nothing"
        )
    if check == "reduce_only_min_exempt":
        if facts["accepted"]:
            return _holds()
        return _close_refusal(exchange, facts, "a remainder below the minimum notional cannot be closed")
    if check == "trade_history":
        if facts["found"] >= facts["expected"]:
            return _holds()
        return _differs("a ghost's exit price and PnL are stored unknown (NULL), never made up")
    if check == "history_window":
        if not facts["accepted"]:
            return _holds()
        return _differs("Egis asks for 7-day windows only, so a wider allowance changes nothing")
    if check == "rate_limit_headers":
        if not facts["missing"]:
            return _holds()
        return _differs(
            "Egis backs off by Retry-After / X-Bapi-Limit-Reset-Timestamp when a throttling answer carries them, "
            "else by the documented default (429: 30 s, 418: 2 min, 10006: 1 s, 403: 10 min)"
        )
    if check == "left_flat":
        if facts["flat"]:
            return _holds()
        return _differs(
            "close it on the exchange by hand: Egis does not track it (the exchange sync reports it as an orphan, "
            "and opens in the symbol are refused)",
            handled=False,
        )
    raise ValueError(f"unknown check {check!r}")


# ---------------------------------------------------------------- the report
@dataclass
class SelftestReport:
    exchange: str
    account: str
    mode: str  # local | testnet | live
    symbol: str
    rows: list[Row]
    flat: bool
    stopped: str | None = None
    run_id: int | None = None
    started_at: datetime | None = None

    @property
    def unhandled(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == DIFFERS and not r.handled]

    def found(self) -> dict[str, int]:
        counts = {HOLDS: 0, DIFFERS: 0, UNCHECKED: 0}
        for row in self.rows:
            counts[row.verdict] += 1
        return {
            "holds": counts[HOLDS],
            "differs": counts[DIFFERS],
            "could_not_check": counts[UNCHECKED],
            "unhandled": len(self.unhandled),
            "left_flat": int(self.flat),
        }

    @property
    def ok(self) -> bool:
        """Exit code 0: finished, flat, and nothing found that Egis does not handle."""
        return self.flat and self.stopped is None and not self.unhandled

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "exchange": self.exchange,
            "account": self.account,
            "mode": self.mode,
            "symbol": self.symbol,
            "found": self.found(),
            "flat": self.flat,
            "stopped": self.stopped,
            "rows": [r.as_dict() for r in self.rows],
        }

    def stored_rows(self) -> list[dict[str, Any]]:
        """What `maintenance_runs.report` keeps: the rows, each with the symbol, and why it stopped."""
        return [r.as_dict() | {"symbol": self.symbol, "stopped": self.stopped} for r in self.rows]


class SelftestRefused(EgisError):
    """The selftest will not run on this account (nothing was sent, or only one positions read)."""


class _Stop(Exception):
    """The script cannot go on (an order whose outcome is unknown, a venue that misbehaved)."""


def account_mode(config: AccountConfig) -> str:
    """local (a simulator or proxy at `base_url`), testnet (ccxt sandbox mode), or live."""
    if config.base_url:
        return "local"
    return "testnet" if config.sandbox else "live"


def account_exchange(ref: str, accounts_dir: Path) -> Exchange | None:
    """The exchange an account file names, if there is one."""
    path = accounts_dir / f"{ref}.json"
    try:
        name = json.loads(path.read_text()).get("exchange")
    except (OSError, ValueError, AttributeError):
        return None
    try:
        return Exchange(name)
    except ValueError:
        return None


def _ceil_to_step(quantity: Decimal, step: Decimal) -> Decimal:
    return fixed((quantity / step).to_integral_value(rounding=ROUND_CEILING) * step)


def _q(value: Decimal | None) -> str:
    return "?" if value is None else format(value.normalize(), "f")


def _is_zero(value: Any) -> bool:
    try:
        return Decimal(str(value)) == 0
    except ArithmeticError:
        return False


def _unknown_outcome(exc: ExchangeCallError) -> bool:
    return exc.code is None or exc.code == "backoff" or bool(_UNKNOWN_OUTCOME & set(exc.error_names))


def _refusal_text(exc: ExchangeCallError) -> str:
    message = exc.message
    start = message.find("{")
    if start >= 0:
        try:
            body = json.loads(message[start:])
            message = str(body.get("msg", body.get("retMsg", message)))
        except ValueError:
            pass
    return f"{exc.code} {message}"[:160]


Checkpoint = Callable[[str], Awaitable[None]]


# ---------------------------------------------------------------- the script
@dataclass
class Selftest:
    gateway: CcxtGateway
    exchange: Exchange
    symbol: str
    checkpoint: Checkpoint | None = None
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    facts: dict[str, tuple[str, Mapping[str, Any]]] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[str, int, Mapping[str, str]]] = field(default_factory=list)
    exposure: Decimal = Decimal(0)  # what the selftest's orders could have opened, at most
    hedge: bool | None = None  # None: the position mode could not be read
    sell_ids: set[str] = field(default_factory=set)  # exchange ids of the selftest's sell orders
    rules: MarketRules = field(default_factory=lambda: MarketRules("", Decimal(1), Decimal(1)))  # set by run()
    price: Decimal = Decimal(0)  # its last price when the trading starts
    open_id: str = ""  # the test open's client id
    opened: Decimal = Decimal(0)  # what the test open filled
    quantity: Decimal = Decimal(0)  # the test open's size

    def client_id(self, tag: str) -> str:
        return f"egst{self.token}{tag}"

    # ------------------------------------------------------------ recording
    def record(self, check: str, answer: str, facts: Mapping[str, Any]) -> None:
        self.facts[check] = (answer, facts)

    def skip(self, check: str, why: str) -> None:
        if check not in self.facts:
            self.unchecked.setdefault(check, why)

    def rows(self, stopped: str | None) -> list[Row]:
        rows = []
        for check in CHECKS:
            if check == "left_flat":
                continue
            if check in self.facts:
                answer, facts = self.facts[check]
                found = judge(check, self.exchange, facts)
                rows.append(
                    Row(check, assumption(check, self.exchange), answer, found.verdict, found.egis_does, found.handled)
                )
            else:
                why = self.unchecked.get(check) or f"not reached: {stopped or 'the script stopped'}"
                rows.append(Row(check, assumption(check, self.exchange), why, UNCHECKED))
        return rows

    # ------------------------------------------------------------ plumbing
    async def _raw(self, kind: str, operation: Any, awaitable: Awaitable[Any]) -> Any:
        seen: list[tuple[int, Any]] = []
        try:
            return await self.gateway.call(operation, awaitable, seen)
        finally:
            self.answers.extend((kind, status, {k.lower(): v for k, v in (h or {}).items()}) for status, h in seen)

    async def _order(
        self, side: OrderSide, quantity: Decimal, client_id: str, *, reduce_only: bool
    ) -> tuple[dict[str, Any] | None, ExchangeCallError | None]:
        """Send one market order (through the gateway's back-off and clock). Returns the answer, or
        the venue's refusal; an error after which nobody knows what happened raises (the script
        stops and the clean-up re-reads the exchange)."""
        self.exposure += quantity
        params: dict[str, Any] = {"clientOrderId": client_id}
        if reduce_only:
            params["reduceOnly"] = True
        ccxt_symbol = await self.gateway.ccxt_symbol(self.symbol)
        order_call = self.gateway.ccxt.create_order(
            ccxt_symbol, "market", side.value, format(quantity, "f"), None, params
        )
        try:
            order = await self._raw("order", "close" if reduce_only else "open", order_call)
        except ExchangeCallError as exc:
            if _unknown_outcome(exc):
                raise
            return None, exc
        if side is OrderSide.SELL and order.get("id"):
            self.sell_ids.add(str(order["id"]))
        return order, None

    async def _position(self) -> tuple[Side | None, Decimal]:
        held = await self.gateway.fetch_symbol_positions(self.symbol)
        if not held:
            return None, Decimal(0)
        if len(held) > 1:
            raise _Stop(f"{self.symbol} holds {len(held)} positions (hedge mode?)")
        return held[0].side, held[0].quantity

    async def _step(
        self, name: str, step: Callable[[], Awaitable[None]], checks: Sequence[str], *, reads: bool
    ) -> None:
        if self.checkpoint is not None:
            await self.checkpoint(name)
        try:
            await step()
        except ExchangeCallError as exc:
            for check in checks:
                self.skip(check, f"{name}: {exc}"[:200])
            if not reads:
                raise _Stop(f"{name}: {exc}"[:200]) from exc

    # ------------------------------------------------------------ the script
    async def run(self, rules: MarketRules) -> None:
        await self._step("clock", self._clock, ["clock"], reads=True)
        await self._step("position_mode", self._position_mode, ["position_mode"], reads=True)
        await self._step("flat_read", self._flat_read, ["flat_read"], reads=True)
        await self._step("unknown_id_lookup", self._unknown_lookup, ["unknown_id_lookup"], reads=True)
        await self._step("history_window", self._history_window, ["history_window"], reads=True)
        if self.hedge is not False:
            why = (
                "hedge mode: Egis does not trade on this account; switch it to one-way and rerun"
                if self.hedge
                else "the position mode could not be read: no order was sent"
            )
            for check in TRADING_CHECKS:
                self.skip(check, why)
            return
        prices = await self.gateway.fetch_tickers([self.symbol])
        if self.symbol not in prices:
            raise _Stop(f"no price for {self.symbol}")
        self.rules, self.price = rules, prices[self.symbol]
        needed = _ceil_to_step(rules.min_notional * NOTIONAL_MARGIN / self.price, rules.amount_step)
        self.quantity = max(rules.min_quantity * 3, needed)  # 3 reduce-only steps; above the minimum notional
        if rules.max_quantity is not None:
            self.quantity = min(self.quantity, rules.max_quantity)
        await self._step("reduce_only_flat", self._reduce_only_flat, ["reduce_only_flat"], reads=False)
        await self._step("min_refusal", self._min_refusal, ["min_refusal"], reads=False)
        await self._step("open", self._open, ["market_answer", "lookup_after_fill", "open_readback"], reads=False)
        await self._step("reuse_filled_id", self._reuse, ["reuse_filled_id"], reads=False)
        await self._step("reduce_only_min_exempt", self._min_exempt, ["reduce_only_min_exempt"], reads=False)
        await self._step("reduce_only_larger", self._larger, ["reduce_only_larger"], reads=False)
        await self._step("trade_history", self._trade_history, ["trade_history"], reads=True)

    async def _clock(self) -> None:
        # ccxt's timeDifference (ours minus the venue's), measured now; ccxt signs with it from here on
        offset = int(await self._raw("read", "read", self.gateway.ccxt.load_time_difference()))
        where = "behind" if offset > 0 else "ahead of"
        answer = f"the venue's clock is {abs(offset)} ms {where} ours" if offset else "the clocks agree (0 ms)"
        self.record("clock", answer, {"offset_ms": offset})

    async def _position_mode(self) -> None:
        if self.exchange is BN:
            raw = await self._raw("read", "read", self.gateway.ccxt.fapiPrivateGetPositionSideDual())
            answer = f"positionSide/dual: dualSidePosition {str(raw.get('dualSidePosition')).lower()}"
        else:
            raw = await self._raw(
                "read",
                "read",
                self.gateway.ccxt.privateGetV5PositionList({"category": "linear", "symbol": self.symbol}),
            )
            indexes = sorted({str(r.get("positionIdx")) for r in raw.get("result", {}).get("list", [])})
            answer = f"position rows carry positionIdx {', '.join(indexes) or '(no row)'}"
        self.gateway.hedge_mode = None  # ask the venue now, not the gateway's memory
        self.hedge = await self.gateway.position_mode(self.symbol) == "hedge"
        self.record("position_mode", f"{answer}: {'hedge' if self.hedge else 'one-way'} mode", {"hedge": self.hedge})

    async def _flat_read(self) -> None:
        ex = self.gateway.ccxt
        if self.exchange is BN:
            rows = await self._raw("read", "read", ex.fapiPrivateV3GetPositionRisk({"symbol": self.symbol}))
            documented = rows == []
            shape = "[] (no row)" if not rows else "; ".join(f"positionAmt {r.get('positionAmt')!r}" for r in rows)
        else:
            answer = await self._raw(
                "read", "read", ex.privateGetV5PositionList({"category": "linear", "symbol": self.symbol})
            )
            rows = answer.get("result", {}).get("list", [])
            documented = bool(rows) and all(r.get("side") == "" and _is_zero(r.get("size")) for r in rows)
            shape = f"{len(rows)} row(s): " + "; ".join(f"side {r.get('side')!r} size {r.get('size')!r}" for r in rows)
        parsed = [self.gateway.parse_position(r) for r in rows]
        through_gateway = await self.gateway.fetch_symbol_positions(self.symbol)
        flat = all(p is None for p in parsed) and not through_gateway
        self.record(
            "flat_read",
            f"{shape}; the gateway reads {'flat' if flat else 'a position'}",
            {"parsed_flat": flat, "documented_shape": documented},
        )

    async def _unknown_lookup(self) -> None:
        client_id = self.client_id("u")
        error = None
        if self.exchange is BN:
            try:
                await self._raw(
                    "read",
                    "read",
                    self.gateway.ccxt.fapiPrivateGetOrder({"symbol": self.symbol, "origClientOrderId": client_id}),
                )
                answer = "an order was returned"
            except ExchangeCallError as exc:
                if _unknown_outcome(exc):
                    raise
                answer = _refusal_text(exc)
        else:
            answer = "realtime and history: empty lists"
        try:
            found = await self.gateway.find_order(self.symbol, client_id) is not None
        except ExchangeCallError as exc:
            if _unknown_outcome(exc):
                raise
            found, error = False, _refusal_text(exc)
        if found:
            answer = "an order was found under an id never used"
        elif error:
            answer = f"the look-up failed: {error}"
        self.record("unknown_id_lookup", answer, {"found": found, "error": error})

    async def _history_window(self) -> None:
        now = int(time.time() * 1000) - int(self.gateway.ccxt.options.get("timeDifference", 0))
        start = now - 8 * 24 * 3600 * 1000
        ex = self.gateway.ccxt
        if self.exchange is BN:
            call = ex.fapiPrivateGetUserTrades({"symbol": self.symbol, "startTime": start, "endTime": now})
        else:
            call = ex.privateGetV5ExecutionList(
                {"category": "linear", "symbol": self.symbol, "startTime": start, "endTime": now}
            )
        try:
            await self._raw("read", "read", call)
        except ExchangeCallError as exc:
            if _unknown_outcome(exc):
                raise
            self.record("history_window", f"an 8-day window is refused: {_refusal_text(exc)}", {"accepted": False})
            return
        self.record("history_window", "an 8-day window was answered", {"accepted": True})

    async def _reduce_only_flat(self) -> None:
        quantity = self.quantity  # above every minimum: only the reduce-only rule can refuse it
        order, refusal = await self._order(OrderSide.SELL, quantity, self.client_id("f"), reduce_only=True)
        if refusal is not None:
            facts = {"accepted": False, "code": refusal.code, "names": list(refusal.error_names)}
            self.record("reduce_only_flat", f"refused: {_refusal_text(refusal)}", facts)
            return
        side, held = await self._position()
        self.record(
            "reduce_only_flat",
            f"accepted (order {order and order.get('id')}); the symbol now holds {side or 'nothing'} {_q(held)}",
            {"accepted": True},
        )
        await self._reflatten("r")

    async def _min_refusal(self) -> None:
        rules, price = self.rules, self.price
        if rules.min_notional and rules.min_quantity * price * NOTIONAL_MARGIN < rules.min_notional:
            quantity, what = rules.min_quantity, f"{_q(rules.min_quantity)} = {_q(rules.min_quantity * price)} USDT"
            below = f"below the minimum notional {_q(rules.min_notional)}"
        elif rules.amount_step < rules.min_quantity:
            quantity, what = rules.amount_step, _q(rules.amount_step)
            below = f"below the minimum size {_q(rules.min_quantity)}"
        else:
            self.skip(
                "min_refusal",
                f"no order can be below the minimum: {_q(rules.min_quantity)} {self.symbol} is worth "
                f"{_q(rules.min_quantity * price)} USDT (minimum notional {_q(rules.min_notional)}) and the step is "
                f"the minimum size; {await self._cheaper_market()}",
            )
            return
        _, refusal = await self._order(OrderSide.BUY, quantity, self.client_id("m"), reduce_only=False)
        if refusal is not None:
            facts = {"accepted": False, "code": refusal.code, "names": list(refusal.error_names)}
            self.record("min_refusal", f"an open of {what}, {below}: {_refusal_text(refusal)}", facts)
            return
        self.record("min_refusal", f"an open of {what}, {below}, was accepted", {"accepted": True})
        await self._reflatten("n")

    async def _open(self) -> None:
        quantity = self.quantity
        client_id = self.client_id("o")
        self.open_id = client_id
        order, refusal = await self._order(OrderSide.BUY, quantity, client_id, reduce_only=False)
        answered = time.monotonic()  # the look-up is timed from the venue's answer
        if refusal is not None:
            raise _Stop(f"the venue refused the test open of {_q(quantity)} {self.symbol}: {_refusal_text(refusal)}")
        assert order is not None
        info = order.get("info") or {}
        if self.exchange is BN:
            facts = {"status": info.get("status"), "executed": Decimal(str(info.get("executedQty") or 0))}
            answer = (
                f"status {info.get('status')}, executedQty {info.get('executedQty')}, avgPrice {info.get('avgPrice')}"
            )
        else:
            facts = {"order_id": bool(info.get("orderId"))}
            answer = f"orderId {info.get('orderId')!r}, orderLinkId {info.get('orderLinkId')!r}"
        self.record("market_answer", answer, facts)

        window = LOOKUP_LAG[self.exchange]
        report, found_after, delay = None, None, 0.05
        while True:
            report = await self.gateway.find_order(self.symbol, client_id)
            elapsed = time.monotonic() - answered
            if report is not None and report.filled_quantity > 0:
                found_after = int(elapsed * 1000)
                break
            if elapsed > window.total_seconds() + LOOKUP_MARGIN_SECONDS:
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
        got = f"{report.status} {_q(report.filled_quantity)}" if report is not None else ""
        if found_after is None:
            answer = f"not found with a fill after {elapsed:.1f} s"
        elif found_after < 1000:
            answer = f"found at once ({found_after} ms): {got}"
        else:
            answer = f"found after {found_after / 1000:.1f} s: {got}"
        self.record(
            "lookup_after_fill", answer, {"found_after_ms": found_after, "window_ms": window.total_seconds() * 1000}
        )

        filled = report.filled_quantity if report is not None and report.filled_quantity > 0 else quantity
        fill_price = report.average_price if report is not None else None
        held = await self.gateway.fetch_symbol_positions(self.symbol)
        position = held[0] if len(held) == 1 else None
        self.opened = filled
        self.record(
            "open_readback",
            (
                f"{position.side} {_q(position.quantity)} @ {_q(position.entry_price)} (order filled {_q(filled)} @ "
                f"{_q(fill_price)})"
                if position is not None
                else f"{len(held)} positions read (order filled {_q(filled)} @ {_q(fill_price)})"
            ),
            {
                "side": position.side.value if position else None,
                "quantity": position.quantity if position else None,
                "filled": filled,
                "entry": position.entry_price if position else None,
                "fill_price": fill_price,
            },
        )

    async def _reuse(self) -> None:
        _, before = await self._position()
        quantity = self.rules.min_quantity
        _, refusal = await self._order(OrderSide.SELL, quantity, self.open_id, reduce_only=True)
        if refusal is not None:
            facts = {"accepted": False, "code": refusal.code, "names": list(refusal.error_names)}
            self.record("reuse_filled_id", f"a reduce-only sell with the open's id: {_refusal_text(refusal)}", facts)
            return
        _, after = await self._position()
        self.record(
            "reuse_filled_id",
            f"a reduce-only sell with the open's id was accepted: position {_q(before)} -> {_q(after)}",
            {"accepted": True},
        )

    async def _min_exempt(self) -> None:
        rules, price = self.rules, self.price
        side, held = await self._position()
        quantity = rules.min_quantity
        if not (rules.min_notional and quantity * price * NOTIONAL_MARGIN < rules.min_notional):
            self.skip(
                "reduce_only_min_exempt",
                f"the minimum size {_q(quantity)} is worth {_q(quantity * price)} USDT, not below the minimum "
                f"notional {_q(rules.min_notional)}; {await self._cheaper_market()}",
            )
            return
        if side is not Side.LONG or held < quantity * 2:
            self.skip("reduce_only_min_exempt", f"the test position is {side or 'flat'} {_q(held)}: too small")
            return
        _, refusal = await self._order(OrderSide.SELL, quantity, self.client_id("e"), reduce_only=True)
        what = f"reduce-only {_q(quantity)} = {_q(quantity * price)} USDT (minimum notional {_q(rules.min_notional)})"
        if refusal is not None:
            facts = {"accepted": False, "code": refusal.code, "names": list(refusal.error_names)}
            self.record("reduce_only_min_exempt", f"{what}: {_refusal_text(refusal)}", facts)
            return
        _, after = await self._position()
        self.record(
            "reduce_only_min_exempt", f"{what}: accepted, position {_q(held)} -> {_q(after)}", {"accepted": True}
        )

    async def _larger(self) -> None:
        side, held = await self._position()
        if side is not Side.LONG:
            self.skip("reduce_only_larger", f"the test position is {side or 'flat'}: nothing to reduce")
            return
        quantity = held * 2
        if self.rules.max_quantity is not None:
            quantity = min(quantity, self.rules.max_quantity)
        _, refusal = await self._order(OrderSide.SELL, quantity, self.client_id("b"), reduce_only=True)
        what = f"reduce-only {_q(quantity)} on a long of {_q(held)}"
        if refusal is not None:
            facts = {"outcome": "refused", "code": refusal.code, "names": list(refusal.error_names)}
            self.record("reduce_only_larger", f"{what}: {_refusal_text(refusal)}", facts)
            return
        after_side, after = await self._position()
        if after_side is None:
            outcome, result = "capped", "capped: flat"
        elif after_side is Side.SHORT:
            outcome, result = "flipped", f"flipped: short {_q(after)}"
        else:
            outcome, result = "unchanged", f"long {_q(after)}"
        self.record("reduce_only_larger", f"{what}: accepted, {result}", {"outcome": outcome})

    async def _trade_history(self) -> None:
        side, held = await self._position()
        sold = self.opened - (held if side is Side.LONG else Decimal(0))
        if sold <= 0 or not self.sell_ids:
            self.skip("trade_history", "the selftest sold nothing")
            return
        since = datetime.now(UTC) - timedelta(minutes=10)
        started = time.monotonic()
        found = Decimal(0)
        while True:
            trades = await self.gateway.fetch_closing_trades(self.symbol, Side.LONG, since)
            found = sum((t.quantity for t in trades if t.order_id in self.sell_ids), Decimal(0))
            waited = time.monotonic() - started
            if found >= sold or waited > HISTORY_WAIT_SECONDS:
                break
            await asyncio.sleep(0.5)
        when = "at once" if waited < 1 else f"after {waited:.1f} s"
        self.record(
            "trade_history",
            f"closing fills of our orders: {_q(found)} of {_q(sold)} sold, {when}",
            {"found": found, "expected": sold},
        )

    async def _cheaper_market(self) -> str:
        """Where the minimum checks can run: a listed market whose minimum size is worth less than its
        minimum notional (one tickers request)."""
        markets = await self.gateway.load_markets()
        candidates = [s for s in CHEAPER_MARKETS if s in markets and s != self.symbol]
        try:
            prices = await self.gateway.fetch_tickers(candidates) if candidates else {}
        except ExchangeCallError:
            prices = {}
        for symbol in candidates:
            rules, price = markets[symbol], prices.get(symbol)
            if price and rules.min_notional and rules.min_quantity * price * NOTIONAL_MARGIN < rules.min_notional:
                return f"rerun with --symbol {symbol} to check it"
        return "rerun with --symbol of a market whose minimum size is worth less than its minimum notional"

    # ------------------------------------------------------------ flat again
    async def _close_held(self, tag: str) -> None:
        """Close (reduce-only, through Egis's own close path) what the symbol holds, up to what the
        selftest could have opened."""
        for i, position in enumerate(await self.gateway.fetch_symbol_positions(self.symbol)):
            quantity = min(position.quantity, self.exposure)
            if quantity <= 0:
                continue
            request = OrderRequest(
                intent=Intent.CLOSE,
                symbol=self.symbol,
                side=OrderSide.SELL if position.side is Side.LONG else OrderSide.BUY,
                quantity=quantity,
                reduce_only=True,
                client_order_id=self.client_id(f"{tag}{i}"),
            )
            await self.gateway.create_order(request)

    async def _reflatten(self, tag: str) -> None:
        """The venue accepted an order it should have refused: close it before going on."""
        await self._close_held(tag)
        side, held = await self._position()
        if side is not None:
            raise _Stop(f"could not close the {side} {_q(held)} an accepted test order left")

    async def flatten(self) -> tuple[bool, str]:
        """Leave the symbol flat, whatever happened: re-read the exchange, close what the selftest
        opened, read again. Waits out a back-off the venue imposed (at most FLATTEN_SECONDS)."""
        deadline = time.monotonic() + FLATTEN_SECONDS
        closed_any, last = False, ""
        for attempt in range(FLATTEN_ATTEMPTS):
            try:
                held = await self.gateway.fetch_symbol_positions(self.symbol)
                if not held:
                    return True, "flat: the selftest closed what it opened" if closed_any else "flat"
                if self.exposure <= 0:
                    return False, f"{self.symbol} holds {_describe(held)}, which the selftest did not open"
                closed_any = True
                await self._close_held(f"z{attempt}")
            except (ExchangeCallError, EgisError) as exc:
                last = str(exc)[:200]
                if attempt == FLATTEN_ATTEMPTS - 1:
                    break
                wait = getattr(exc, "retry_after", None) or 0.5 * 2**attempt  # a back-off must end first
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        try:
            held = await self.gateway.fetch_symbol_positions(self.symbol)
        except ExchangeCallError as exc:
            return False, f"could not read {self.symbol} to check it is flat: {exc}"[:300]
        if not held:
            return True, "flat: the selftest closed what it opened"
        return False, f"could not flatten: {self.symbol} still holds {_describe(held)}" + (f" ({last})" if last else "")


def _describe(held: Sequence[Any]) -> str:
    return ", ".join(f"{p.side} {_q(p.quantity)}" for p in held)


# ---------------------------------------------------------------- running it
async def run_selftest(
    engine: AsyncEngine,
    accounts_dir: Path,
    account: str,
    *,
    exchange: Exchange | None = None,
    symbol: str = "BTCUSDT",
    allow_live: bool = False,
    actor: str = "cli",
    checkpoint: Checkpoint | None = None,
) -> SelftestReport:
    """Run the selftest on one account and store its report. `checkpoint` is awaited with each
    step's name before the step (tests inject venue faults there)."""
    exchange = exchange or account_exchange(account, accounts_dir)
    if exchange is None:
        raise InvalidInput(f"account {account!r}: no account file names its exchange; give --exchange")
    if exchange not in (BN, BY):
        raise InvalidInput(f"the selftest checks Binance USD-M and Bybit accounts, not {exchange.value}")
    config = load_account(account, exchange, accounts_dir)
    mode = account_mode(config)
    if mode == "live" and not allow_live:
        raise SelftestRefused(
            f"account {account!r} is a live {exchange.value} account (no sandbox, no base_url): the selftest "
            f"places real orders; nothing was sent. Use a testnet account (sandbox: true), or pass {LIVE_FLAG}"
        )
    gateway = build_gateway(exchange, account, config, engine)
    assert isinstance(gateway, CcxtGateway)
    try:
        rules = await gateway.market(symbol)
        await _refuse_unknown_positions(gateway, engine, exchange, account, symbol)
        started_at = datetime.now(UTC)
        async with engine.begin() as conn:
            run_id = await start_run(conn, KIND, mode, actor, f"{exchange.value}/{account}")
        test = Selftest(gateway, exchange, symbol, checkpoint)
        stopped: str | None = None
        interrupted: BaseException | None = None
        try:
            await test.run(rules)
        except _Stop as exc:
            stopped = str(exc)
        except Exception as exc:
            stopped = f"{type(exc).__name__}: {exc}"[:300]
        except BaseException as exc:  # Ctrl-C, cancellation: flatten first, then go
            stopped, interrupted = f"interrupted ({type(exc).__name__})", exc
        flat, flat_text = await test.flatten()
        rows = test.rows(stopped)
        headers = _header_facts(exchange, test.answers)
        if headers is None:
            rows[CHECKS.index("rate_limit_headers")].answer = "no answer was collected"
        else:
            answer, facts = headers
            found = judge("rate_limit_headers", exchange, facts)
            rows[CHECKS.index("rate_limit_headers")] = Row(
                "rate_limit_headers",
                assumption("rate_limit_headers", exchange),
                answer,
                found.verdict,
                found.egis_does,
                found.handled,
            )
        verdict = judge("left_flat", exchange, {"flat": flat})
        rows.append(
            Row(
                "left_flat",
                assumption("left_flat", exchange),
                flat_text,
                verdict.verdict,
                verdict.egis_does,
                verdict.handled,
            )
        )
        report = SelftestReport(exchange.value, account, mode, symbol, rows, flat, stopped, run_id, started_at)
        async with engine.begin() as conn:
            await finish_run(conn, run_id, report.found(), report.stored_rows())
        if interrupted is not None:
            raise interrupted
        return report
    finally:
        await gateway.close()


def _header_facts(
    exchange: Exchange, answers: Sequence[tuple[str, int, Mapping[str, str]]]
) -> tuple[str, dict[str, Any]] | None:
    if not answers:
        return None
    wanted = _HEADERS[exchange]
    missing: list[str] = []
    for name in wanted["any"]:
        have = sum(1 for _, _, h in answers if name in h)
        if have < len(answers):
            missing.append(name)
    orders = [h for kind, _, h in answers if kind == "order"]
    for name in wanted["order"]:
        if orders and sum(1 for h in orders if name in h) < len(orders):
            missing.append(name)
    if missing:
        answer = f"missing on some of {len(answers)} answers: {', '.join(missing)}"
    else:
        answer = f"present on all {len(answers)} answers ({len(orders)} order answers)"
    return answer, {"missing": missing}


async def _refuse_unknown_positions(
    gateway: CcxtGateway, engine: AsyncEngine, exchange: Exchange, account: str, symbol: str
) -> None:
    """Never on an account holding a position Egis does not know, nor any position in the symbol."""
    held = await gateway.fetch_positions()
    async with engine.connect() as conn:
        ours = await account_positions(conn, exchange.value, account)
    theirs = [TheirPosition(p.symbol, p.side.value, p.quantity) for p in held]
    unknown = untracked(theirs, ours)
    if unknown:
        listed = ", ".join(f"{p.side} {p.symbol} {_q(p.quantity)}" for p in unknown[:5])
        raise SelftestRefused(
            f"{exchange.value}/{account} holds positions Egis does not know ({listed}); the selftest runs only on "
            "an account whose every position Egis tracks. Nothing was sent"
        )
    mine = [p for p in held if p.symbol == symbol]
    if mine:
        raise SelftestRefused(
            f"{exchange.value}/{account} holds {_describe(mine)} {symbol}: the test orders would net against it. "
            "Choose another --symbol; nothing was sent"
        )


# ---------------------------------------------------------------- what the worker and `accounts show` read
async def latest_selftest(conn: AsyncConnection, exchange: Exchange, account: str) -> dict[str, Any] | None:
    scope = f"{exchange.value}/{account}"
    return next((r for r in await latest_runs(conn, KIND) if r["scope"] == scope), None)


def warning_for(run: Mapping[str, Any] | None) -> str | None:
    """The warning a stored selftest deserves: differences Egis does not handle, or an account left
    holding a position."""
    if run is None:
        return None
    rows = run.get("report") or []
    unhandled = [r for r in rows if r.get("verdict") == DIFFERS and not r.get("handled", True)]
    if not unhandled:
        return None
    listed = "; ".join(f"{r['check']}: {r['answer']} ({r['egis_does']})" for r in unhandled)
    return (
        f"the last selftest of {run['scope']} (run {run['id']}, {run['finished_at'].astimezone(UTC):%Y-%m-%d %H:%M} "
        f"UTC) found "
        f"{len(unhandled)} difference(s) Egis does not handle: {listed}"
    )


# ---------------------------------------------------------------- text
def render_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """One block per assumption: the check and its verdict, what Egis assumes, what the venue
    answered, and what Egis does about a difference."""
    width = max((len(r["check"]) for r in rows), default=0)
    lines = []
    for n, row in enumerate(rows, 1):
        verdict = row["verdict"]
        if verdict == DIFFERS:
            verdict = "DIFFERS" + ("" if row.get("handled", True) else ", NOT HANDLED")
        lines.append(f"{n:2}. {row['check']:<{width}}  {verdict}")
        lines.append(f"    Egis assumes    {row['assumption']}")
        lines.append(f"    venue answered  {row['answer']}")
        if row.get("egis_does"):
            lines.append(f"    Egis does       {row['egis_does']}")
    return "\n".join(lines)


def summary(found: Mapping[str, int], flat: bool) -> str:
    text = (
        f"holds {found.get('holds', 0)}, differs {found.get('differs', 0)} "
        f"({found.get('unhandled', 0)} not handled by Egis), could not check {found.get('could_not_check', 0)}; "
    )
    return text + ("the account was left flat" if flat else "the account was NOT left flat")


def render(report: SelftestReport) -> str:
    head = f"egis selftest: {report.exchange}/{report.account} ({report.mode}), {report.symbol}, run {report.run_id}"
    lines = [head, "", render_rows([r.as_dict() for r in report.rows]), "", summary(report.found(), report.flat)]
    if report.stopped:
        lines.append(f"the script stopped early: {report.stopped}")
    if report.unhandled:
        lines.append(
            "differences Egis does not handle: "
            + ", ".join(r.check for r in report.unhandled)
            + " (the worker warns about this account at start)"
        )
    return "\n".join(lines)
