"""The simulator's private websocket streams, driven by the real ccxt.pro clients (ccxt 4.5.90).

Every test starts a fresh simulator and talks to it with unmodified ``ccxt.pro.binanceusdm`` /
``ccxt.pro.bybit`` instances whose URLs were rewritten by ``point_to_local``; only options ccxt documents
are set (ping interval, listen-key refresh rate, the positions snapshot), each where a test needs it.

How events are observed: ccxt.pro files every pushed frame into its caches (``orders``, ``myTrades``,
``positions``, ``myLiquidations``) as it arrives, but a ``watch_*`` call only returns when a frame arrives
while it is pending (an event landing between two calls waits for the next one). So a ``Pump`` keeps one
``watch_*`` call pending (which also opens and reads the socket) and the assertions read the caches.
Where a test must see a frame ccxt does not file (``listenKeyExpired``, pongs, subscription answers) it
records what ``handle_message`` is given, without changing what it does.

What the unmodified client does against the simulator, as these tests pin it:
- Binance: the listen-key keep-alive PUT runs once, never again (``test_binance_keepalive_put_runs_once``);
  ``listenKeyExpired`` is ignored: no error, the pending watch stays pending, later fills never arrive
  (``test_binance_listen_key_expiry``); liquidation fills (``x`` CALCULATED) reach ``watch_orders`` and
  ``watch_my_liquidations`` but not ``watch_my_trades``.
- Bybit: a refused ``auth`` raises ExchangeError (not AuthenticationError: today's failure frame carries
  ``op`` at the top level, where ccxt does not look) and every later watch on that client hangs, because
  ccxt keeps the connection marked as authenticated (``test_bybit_auth_refused_then_client_hangs``).
- Both: a dropped socket rejects the pending watch with NetworkError, a silent one with RequestTimeout
  after two missed pongs; the next watch reconnects at once; nothing missed in between is replayed.
  When the positions snapshot's REST call fails, the first watch_positions never returns
  (``test_a_failed_snapshot_leaves_watch_positions_hanging``); Bybit's snapshot also reads inverse
  positions, which the simulator answers with an empty list.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.pro as ccxtpro
import pytest
from ccxt.base.errors import AuthenticationError, ExchangeError, NetworkError, RequestTimeout

from egis.exchanges.local import point_to_local
from egis.simulator import SimulatorControl, SimulatorControlError, SimulatorServer, start_simulator

BTC = "BTC/USDT:USDT"
VENUES = ["binanceusdm", "bybit"]
CLASSES = {"binanceusdm": ccxtpro.binanceusdm, "bybit": ccxtpro.bybit}
HOUR_MS = 3_600_000

Exchange = Any  # a ccxt.pro exchange instance
MakeExchange = Callable[..., Exchange]


@pytest.fixture
async def sim() -> AsyncIterator[SimulatorServer]:
    async with await start_simulator() as server:
        yield server


@pytest.fixture
async def control(sim: SimulatorServer) -> AsyncIterator[SimulatorControl]:
    async with SimulatorControl(sim.base_url) as client:
        yield client


@pytest.fixture
async def make_exchange(sim: SimulatorServer) -> AsyncIterator[MakeExchange]:
    created: list[Exchange] = []

    def make(
        exchange_id: str,
        api_key: str = "k1",
        *,
        keep_alive_ms: int | None = None,
        snapshot: bool = True,
        secret: str | None = None,
        **options: Any,
    ) -> Exchange:
        registered = f"{api_key}-secret"
        sim.core.register_api_key(api_key, registered)
        config = {
            "apiKey": api_key,
            "secret": secret or registered,
            "enableRateLimit": False,
            "timeout_on_exit": 0,  # else close() sleeps 250 ms for a TLS shutdown moot on local http
        }
        exchange = point_to_local(CLASSES[exchange_id](config), sim.base_url)
        if keep_alive_ms is not None:  # ccxt's ping interval (Binance 180 s, Bybit 18 s by default)
            exchange.streaming = {**exchange.streaming, "keepAlive": keep_alive_ms}
        if not snapshot:
            exchange.options["watchPositions"] = {"fetchPositionsSnapshot": False, "awaitPositionsSnapshot": False}
        exchange.options.update(options)
        created.append(exchange)
        return exchange

    yield make
    await asyncio.gather(*(exchange.close() for exchange in created))


class Pump:
    """Keeps one ``watch_*`` call pending on a client, recording what the calls return or raise.

    With ``retry`` the next call follows at once (ccxt then reconnects), else the pump stops at the first
    error."""

    def __init__(self, ex: Exchange, method: str, *args: Any, retry: bool = True) -> None:
        self.results: list[list[dict[str, Any]]] = []
        self.errors: list[BaseException] = []
        self._call = lambda: getattr(ex, method)(*args)
        self._retry = retry
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.results.append(list(await self._call()))
            except Exception as exc:
                self.errors.append(exc)
                if not self._retry:
                    return
                await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def eventually(check: Callable[[], Any], what: str, timeout: float = 5.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
    return result


async def connected(control: SimulatorControl, api_key: str = "k1", count: int = 1) -> list[dict[str, Any]]:
    """Wait until ``api_key`` has ``count`` open (authenticated) stream connections; returns them."""
    deadline = time.monotonic() + 5
    while True:
        conns = (await control.streams(api_key))["connections"]
        if len(conns) >= count:
            return conns
        if time.monotonic() > deadline:
            raise AssertionError(f"{api_key} never had {count} stream connection(s): {conns}")
        await asyncio.sleep(0.02)


async def subscribed(control: SimulatorControl, topics: int, api_key: str = "k1") -> None:
    """Wait until the (single) Bybit connection of ``api_key`` has ``topics`` subscriptions."""
    deadline = time.monotonic() + 5
    while len((await connected(control, api_key))[0]["topics"]) < topics:
        if time.monotonic() > deadline:
            raise AssertionError(f"{api_key} never subscribed {topics} topics")
        await asyncio.sleep(0.02)


def record_messages(ex: Exchange) -> list[Any]:
    """Every frame ccxt's ``handle_message`` is given, in order (it still handles them as before)."""
    seen: list[Any] = []
    handle = ex.handle_message

    def recording(client: Any, message: Any) -> Any:
        seen.append(message)
        return handle(client, message)

    ex.handle_message = recording
    return seen


def orders(ex: Exchange) -> list[dict[str, Any]]:
    return list(ex.orders or [])


def trades(ex: Exchange) -> list[dict[str, Any]]:
    return list(ex.myTrades or [])


def positions(ex: Exchange) -> list[dict[str, Any]]:
    cache = ex.positions.get("linear") if isinstance(ex.positions, dict) else ex.positions
    return list(cache or [])


def order_with(ex: Exchange, order_id: str, status: str) -> dict[str, Any] | None:
    return next((o for o in orders(ex) if o["id"] == order_id and o["status"] == status), None)


async def buy(ex: Exchange, amount: float = 0.01) -> dict[str, Any]:
    return await ex.create_order(BTC, "market", "buy", amount)


# ------------------------------------------------------------------------------------ events per fill


async def test_binance_events_for_api_fills_and_exchange_closes(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await ex.load_markets()
    frames = record_messages(ex)
    pumps = [Pump(ex, "watch_orders"), Pump(ex, "watch_my_trades"), Pump(ex, "watch_positions")]
    await connected(control)

    opened = await buy(ex)
    await eventually(lambda: order_with(ex, opened["id"], "closed"), "the API order filled")
    closed = await control.close_position("k1", "BTCUSDT")
    close_id = str(closed["order"]["id"])
    final = await eventually(lambda: order_with(ex, close_id, "closed"), "the exchange-side close")

    # ORDER_TRADE_UPDATE NEW, ORDER_TRADE_UPDATE TRADE, ACCOUNT_UPDATE per fill, in that order
    events = [(f["e"], f.get("o", {}).get("x")) for f in frames]
    per_fill = [("ORDER_TRADE_UPDATE", "NEW"), ("ORDER_TRADE_UPDATE", "TRADE"), ("ACCOUNT_UPDATE", None)]
    assert events == per_fill * 2
    assert final["clientOrderId"] == f"web_{close_id}"  # a close made on the website
    assert final["info"]["X"] == "FILLED"
    assert final["info"]["q"] == "0.01"  # numbers as plain strings, like the venue
    assert final["info"]["rp"] == "0.00"  # realized profit of the trade (price unchanged)
    assert [(t["side"], t["amount"], t["order"]) for t in trades(ex)] == [
        ("buy", 0.01, opened["id"]),
        ("sell", 0.01, close_id),
    ]
    # the flat position arrives as side "both", contracts 0: a different cache key than the "long" row
    rows = [(p["side"], p["contracts"]) for p in positions(ex)]
    assert ("long", 0.01) in rows
    assert ("both", 0.0) in rows
    account_update = frames[-1]["a"]
    assert account_update["m"] == "ORDER"
    flat = account_update["P"][0]
    assert (flat["s"], Decimal(flat["pa"]), flat["ps"], flat["mt"]) == ("BTCUSDT", 0, "BOTH", "cross")
    assert Decimal(account_update["B"][0]["wb"]) == Decimal(10000)
    assert all(p.results for p in pumps)  # every watch_* call returned data too
    state = await control.streams("k1")
    assert state["connections"][0]["sent"] == 6
    for pump in pumps:
        await pump.stop()


async def test_binance_liquidation_and_adl_events(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm", snapshot=False)
    await ex.load_markets()
    pumps = [Pump(ex, "watch_orders"), Pump(ex, "watch_my_trades"), Pump(ex, "watch_my_liquidations", BTC)]
    await connected(control)

    await buy(ex, 0.02)
    adl = await control.auto_deleverage("k1", "BTCUSDT", Decimal("0.01"))
    liquidation = await control.liquidate("k1", "BTCUSDT", Decimal("59000"))
    liquidation_id = str(liquidation["order"]["id"])
    liquidated = await eventually(lambda: order_with(ex, liquidation_id, "closed"), "the liquidation order")
    adl_order = await eventually(lambda: order_with(ex, str(adl["order"]["id"]), "closed"), "the ADL order")

    # "c shows as autoclose-XXX" for liquidations, "adl_autoclose" for ADL (Event: Order Update)
    assert liquidated["clientOrderId"].startswith("autoclose-")
    assert (liquidated["info"]["o"], liquidated["info"]["x"]) == ("LIQUIDATION", "CALCULATED")
    assert liquidated["info"]["L"] == "59000"
    assert adl_order["clientOrderId"] == "adl_autoclose"
    assert adl_order["info"]["x"] == "TRADE"
    # ccxt.pro files a trade only for x == TRADE: the liquidation fill never reaches watch_my_trades...
    await eventually(lambda: len(trades(ex)) == 2, "the open and the ADL trades")
    assert liquidation_id not in {t["order"] for t in trades(ex)}
    # ...but it does reach watch_my_liquidations (o == LIQUIDATION), as does the order's NEW update (a row of
    # 0 contracts at price 0: ccxt files every update of a LIQUIDATION order)
    mine = await eventually(lambda: list(ex.myLiquidations or []), "the liquidation in watch_my_liquidations")
    mine = await eventually(lambda: list(ex.myLiquidations or []) if len(ex.myLiquidations) == 2 else None, "both")
    assert [(m["symbol"], m["contracts"], m["price"]) for m in mine] == [(BTC, 0.0, 0.0), (BTC, 0.01, 59000.0)]
    for pump in pumps:
        await pump.stop()


async def test_bybit_events_for_api_fills_and_exchange_closes(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("bybit", snapshot=False)
    await ex.load_markets()
    frames = record_messages(ex)
    pumps = [Pump(ex, "watch_orders"), Pump(ex, "watch_my_trades"), Pump(ex, "watch_positions")]
    await connected(control)
    await eventually(lambda: len([f for f in frames if f.get("op") == "subscribe"]) == 3, "3 subscription acks")

    await buy(ex, 0.03)
    await control.reduce_position("k1", "BTCUSDT", Decimal("0.01"))
    await control.auto_deleverage("k1", "BTCUSDT", Decimal("0.01"))
    liquidation = await control.liquidate("k1", "BTCUSDT")

    await eventually(lambda: len(trades(ex)) == 4, "four executions")
    assert [t["info"]["execType"] for t in trades(ex)] == ["Trade", "Trade", "AdlTrade", "BustTrade"]
    assert [t["info"]["createType"] for t in trades(ex)] == [
        "CreateByUser",
        "CreateByClosing",
        "CreateByAdl_PassThrough",
        "CreateByTakeOver_PassThrough",
    ]
    last = await eventually(lambda: order_with(ex, str(liquidation["order"]["id"]), "closed"), "the liquidation")
    assert last["info"]["category"] == "linear"
    # the flat position is pushed: side "" and size "0" (ccxt: side None, contracts 0)
    flat = await eventually(
        lambda: [f["data"][0] for f in frames if f.get("topic") == "position" and Decimal(f["data"][0]["size"]) == 0],
        "the flat position",
    )
    assert (flat[0]["side"], flat[0]["positionIdx"], flat[0]["category"]) == ("", 0, "linear")
    assert all(p["contracts"] == 0 for p in positions(ex))  # ccxt resets both sides on a flat update
    topics = [f["topic"] for f in frames if "topic" in f]
    assert topics == ["order", "execution", "position"] * 4
    for pump in pumps:
        await pump.stop()


async def test_bybit_inverse_snapshot_does_not_hang(make_exchange: MakeExchange, sim: SimulatorServer) -> None:
    """ccxt.pro's default positions snapshot reads linear and inverse positions over REST; the inverse answer
    is an empty list, so the first watch_positions returns the snapshot (it hung when that call failed)."""
    ex = make_exchange("bybit")
    await ex.load_markets()
    await buy(ex)
    start = len(sim.core.request_log)
    snapshot = await asyncio.wait_for(ex.watch_positions(), 5)
    assert [(p["symbol"], p["side"], p["contracts"]) for p in snapshot] == [(BTC, "long", 0.01)]
    queried = [r.query.get("category") for r in sim.core.request_log[start:] if r.path == "/v5/position/list"]
    assert sorted(queried) == ["inverse", "linear"]


@pytest.mark.parametrize(
    ("venue", "route"), [("binanceusdm", "GET /fapi/v3/positionRisk"), ("bybit", "GET /v5/position/list")]
)
async def test_a_failed_snapshot_leaves_watch_positions_hanging(
    venue: str, route: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    """ccxt.pro behaviour pinned, not a simulator one: when the positions snapshot's REST call fails once,
    the first watch_positions never returns (the snapshot future is neither resolved nor rejected)."""
    ex = make_exchange(venue)
    await ex.load_markets()
    await control.add_fault(route, "http", http_status=500)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ex.watch_positions(), 1.5)


# ------------------------------------------------------------------------------------ Binance listen keys


async def test_binance_listen_key_rest_lifecycle(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm")
    first = (await ex.fapiPrivatePostListenKey())["listenKey"]
    assert len(first) == 64
    before = (await control.streams("k1"))["listen_keys"][0]["expires_ms"]
    await asyncio.sleep(0.01)
    assert (await ex.fapiPrivatePostListenKey())["listenKey"] == first  # the active key, extended
    assert (await ex.fapiPrivatePutListenKey())["listenKey"] == first
    after = (await control.streams("k1"))["listen_keys"][0]
    assert after["expires_ms"] > before
    assert after["expires_ms"] - ex.milliseconds() == pytest.approx(HOUR_MS, abs=2000)

    assert await ex.fapiPrivateDeleteListenKey() == {}
    with pytest.raises(ExchangeError, match="-1125"):
        await ex.fapiPrivatePutListenKey()
    assert (await ex.fapiPrivatePostListenKey())["listenKey"] != first  # a new key after DELETE


async def test_binance_delete_closes_the_stream(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm", snapshot=False)
    pump = Pump(ex, "watch_orders", retry=False)
    await connected(control)
    await ex.fapiPrivateDeleteListenKey()
    await eventually(lambda: pump.errors, "the watch to fail")
    assert isinstance(pump.errors[0], NetworkError)
    assert "1001" in str(pump.errors[0])
    await pump.stop()


async def test_binance_keepalive_put_runs_once(make_exchange: MakeExchange, sim: SimulatorServer) -> None:
    """ccxt.pro 4.5.90 schedules the PUT keep-alive after the first POST, but never reschedules it (its
    client lookup always misses): one PUT, then none. The key lives on only while watch_* calls re-POST."""
    ex = make_exchange("binanceusdm", snapshot=False, listenKeyRefreshRate=200)
    pump = Pump(ex, "watch_orders")
    await asyncio.sleep(1.5)  # seven refresh periods
    calls = [r.method for r in sim.core.request_log if r.path == "/fapi/v1/listenKey"]
    assert calls == ["POST", "PUT"]
    await pump.stop()


@pytest.mark.parametrize("how", ["clock", "control"])
async def test_binance_listen_key_expiry(
    how: str, make_exchange: MakeExchange, control: SimulatorControl, sim: SimulatorServer
) -> None:
    """60 minutes after the last POST/PUT the key expires: the connection gets ``listenKeyExpired`` (``E`` a
    string, as documented) and then no events, but stays open and keeps answering pings. ccxt.pro ignores
    the frame: no error, the pending watch stays pending, the next fill is simply never seen."""
    ex = make_exchange("binanceusdm", snapshot=False, keep_alive_ms=200)
    frames = record_messages(ex)
    pump = Pump(ex, "watch_orders")
    conn = (await connected(control))[0]
    if how == "clock":
        await control.settings(clock_offset_ms=HOUR_MS + 1000)
    else:
        assert await control.expire_listen_key("k1") == conn["listen_key"]
    expired = await eventually(lambda: [f for f in frames if f.get("e") == "listenKeyExpired"], "listenKeyExpired")
    assert expired[0]["listenKey"] == conn["listen_key"]
    assert isinstance(expired[0]["E"], str)
    await control.settings(clock_offset_ms=0)  # signed REST calls need the clock back

    placed = await buy(ex)
    await asyncio.sleep(1.0)  # five ping periods: pongs still come, so no timeout either
    assert not pump.errors
    assert order_with(ex, placed["id"], "closed") is None
    state = (await control.streams("k1"))["connections"]
    assert [(c["id"], c["expired"], c["lost"]) for c in state] == [(conn["id"], True, 3)]
    key = (await control.streams("k1"))["listen_keys"][0]
    assert (key["expired"], key["active"]) == (True, False)
    with pytest.raises(ExchangeError, match="-1125"):
        await ex.fapiPrivatePutListenKey()
    # a new connection with the expired key is refused before the upgrade
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(f"{sim.base_url}/private/ws?listenKey={conn['listen_key']}")
    await pump.stop()


async def test_binance_legacy_ws_path(
    make_exchange: MakeExchange, control: SimulatorControl, sim: SimulatorServer
) -> None:
    """The documented ``/ws/<listenKey>`` path serves the same events (checked with a plain websocket)."""
    ex = make_exchange("binanceusdm")
    key = (await ex.fapiPrivatePostListenKey())["listenKey"]
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{sim.base_url}/ws/{key}") as ws:
        await connected(control)
        await buy(ex)
        received = [json.loads((await ws.receive(timeout=5)).data) for _ in range(3)]
    assert [f["e"] for f in received] == ["ORDER_TRADE_UPDATE", "ORDER_TRADE_UPDATE", "ACCOUNT_UPDATE"]


async def test_binance_refused_listen_key(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm", snapshot=False)
    await control.refuse_stream_auth("binanceusdm", "k1")
    with pytest.raises(AuthenticationError, match="-2015"):
        await ex.watch_orders()
    pump = Pump(ex, "watch_orders")  # the next POST is answered
    await connected(control)
    placed = await buy(ex)
    await eventually(lambda: order_with(ex, placed["id"], "closed"), "the fill after the refusal")
    await pump.stop()


# ------------------------------------------------------------------------------------ Bybit protocol


def bybit_auth(api_key: str, secret: str, expires: int) -> dict[str, Any]:
    signature = hmac.new(secret.encode(), f"GET/realtime{expires}".encode(), hashlib.sha256).hexdigest()
    return {"op": "auth", "args": [api_key, expires, signature]}


async def test_bybit_auth_refused_then_client_hangs(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit", snapshot=False)
    await ex.load_markets()
    await control.refuse_stream_auth("bybit", "k1")
    with pytest.raises(ExchangeError, match="Params Error") as refused:
        await ex.watch_orders()
    assert not isinstance(refused.value, AuthenticationError)
    # ccxt keeps the connection marked as authenticated: no auth is sent again and the watch never returns
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ex.watch_orders(), 1.0)
    [conn] = (await control.streams())["connections"]
    assert (conn["api_key"], conn["topics"]) == (None, [])


@pytest.mark.parametrize("problem", ["expired", "wrong_secret"])
async def test_bybit_auth_checks_expires_and_signature(
    problem: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    secret = "not-the-secret" if problem == "wrong_secret" else None
    ex = make_exchange("bybit", snapshot=False, secret=secret)
    await ex.load_markets()
    if problem == "expired":  # ccxt signs expires = now + 10 s; the simulator's clock is a minute ahead
        await control.settings(clock_offset_ms=60_000)
    with pytest.raises(ExchangeError, match="Params Error"):
        await ex.watch_orders()


async def test_bybit_protocol_answers(sim: SimulatorServer, control: SimulatorControl) -> None:
    """The answers themselves, over a plain websocket: auth, subscribe (req_id echoed), ping/pong, and the
    refusals (subscribe before auth, unknown topics, unknown op)."""
    sim.core.register_api_key("k1", "k1-secret")
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{sim.base_url}/v5/private") as ws:

        async def ask(request: dict[str, Any]) -> dict[str, Any]:
            await ws.send_json(request)
            return json.loads((await ws.receive(timeout=5)).data)

        early = await ask({"op": "subscribe", "req_id": "s0", "args": ["order"]})
        assert early | {"conn_id": "-"} == {
            "success": False,
            "ret_msg": "error:topic:order needs auth first",
            "op": "subscribe",
            "conn_id": "-",
            "req_id": "s0",
        }
        stale = await ask(bybit_auth("k1", "k1-secret", sim.core.now_ms() - 1))
        assert (stale["success"], stale["ret_msg"], stale["op"]) == (False, "Params Error", "auth")
        auth = await ask(bybit_auth("k1", "k1-secret", sim.core.now_ms() + 10_000))
        conn_id = auth["conn_id"]
        assert auth == {"success": True, "ret_msg": "", "op": "auth", "conn_id": conn_id}
        ack = await ask({"op": "subscribe", "req_id": "s1", "args": ["position", "order.linear"]})
        assert ack == {"success": True, "ret_msg": "", "op": "subscribe", "conn_id": conn_id, "req_id": "s1"}
        pong = await ask({"op": "ping", "req_id": "p1"})
        assert pong | {"args": ["-"]} == {"req_id": "p1", "op": "pong", "args": ["-"], "conn_id": conn_id}
        assert int(pong["args"][0]) == pytest.approx(sim.core.now_ms(), abs=2000)
        refused = await ask({"op": "subscribe", "req_id": "s2", "args": ["wallet"]})
        assert (refused["success"], refused["req_id"]) == (False, "s2")
        unknown = await ask({"op": "dance"})
        assert (unknown["success"], unknown["ret_msg"]) == (False, "error:invalid op")
        # protocol-level pings are answered too
        await ws.ping(b"hi")
        state = (await control.streams("k1"))["connections"][0]
        assert state["topics"] == ["order.linear", "position"]


async def test_bybit_pings_are_answered(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit", snapshot=False, keep_alive_ms=200)
    await ex.load_markets()
    frames = record_messages(ex)
    pump = Pump(ex, "watch_orders")
    await connected(control)
    await asyncio.sleep(1.2)  # six ping periods; two missed pongs would raise RequestTimeout
    assert not pump.errors
    pongs = [f for f in frames if f.get("op") == "pong"]
    assert len(pongs) >= 3
    assert set(pongs[0]) == {"req_id", "op", "args", "conn_id"}
    await pump.stop()


# ------------------------------------------------------------------------------------ stream faults


@pytest.mark.parametrize("venue", VENUES)
@pytest.mark.parametrize(("mode", "code"), [("abort", "1006"), ("close", "1001")])
async def test_drop_rejects_the_watch_and_nothing_is_replayed(
    venue: str, mode: str, code: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange(venue, snapshot=False)
    await ex.load_markets()
    pump = Pump(ex, "watch_orders", retry=False)
    [first] = await connected(control)
    assert await control.drop_streams(venue, "k1", mode=mode) == 1
    await eventually(lambda: pump.errors, "the watch to fail")
    assert isinstance(pump.errors[0], NetworkError)
    assert f"closing code {code}" in str(pump.errors[0])

    missed = await buy(ex)  # while no socket is open
    pump = Pump(ex, "watch_orders")  # ccxt reconnects on the next watch
    [second] = await connected(control)
    assert second["id"] != first["id"]
    seen = await buy(ex)
    await eventually(lambda: order_with(ex, seen["id"], "closed"), "the fill after the reconnection")
    assert order_with(ex, missed["id"], "closed") is None  # the venue replays nothing
    await pump.stop()


@pytest.mark.parametrize("venue", VENUES)
async def test_silence_times_the_client_out(venue: str, make_exchange: MakeExchange, control: SimulatorControl) -> None:
    """No events and no pongs: ccxt raises RequestTimeout after two missed pongs and drops the socket."""
    ex = make_exchange(venue, snapshot=False, keep_alive_ms=250)
    await ex.load_markets()
    pump = Pump(ex, "watch_orders", retry=False)
    await connected(control)
    assert await control.silence_streams(venue, "k1") == 1
    placed = await buy(ex)
    started = time.monotonic()
    await eventually(lambda: pump.errors, "the ping timeout", timeout=5)
    assert isinstance(pump.errors[0], RequestTimeout)
    assert time.monotonic() - started < 2.0
    assert order_with(ex, placed["id"], "closed") is None
    # the next watch opens a new, unaffected connection
    pump = Pump(ex, "watch_orders")
    [fresh] = await connected(control)
    assert not fresh["silent"]
    seen = await buy(ex)
    await eventually(lambda: order_with(ex, seen["id"], "closed"), "a fill on the new connection")
    await pump.stop()


@pytest.mark.parametrize("venue", VENUES)
async def test_timed_silence_loses_events_then_ends(
    venue: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange(venue, snapshot=False)  # default ping interval: the client notices nothing
    await ex.load_markets()
    pump = Pump(ex, "watch_orders")
    await connected(control)
    await control.silence_streams(venue, "k1", seconds=0.5)
    lost = await buy(ex)
    silent = (await control.streams("k1"))["connections"][0]
    assert silent["silent"]
    assert silent["silent_for"] == pytest.approx(0.5, abs=0.3)
    await asyncio.sleep(0.6)
    seen = await buy(ex)
    await eventually(lambda: order_with(ex, seen["id"], "closed"), "a fill after the silence")
    assert order_with(ex, lost["id"], "closed") is None
    [conn] = (await control.streams("k1"))["connections"]
    assert conn["lost"] == (3 if venue == "binanceusdm" else 1)  # Bybit: only the subscribed order topic
    assert not pump.errors
    await pump.stop()


async def test_clearing_a_silence(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit", snapshot=False)
    await ex.load_markets()
    pump = Pump(ex, "watch_orders")
    await connected(control)
    await control.silence_streams("bybit", "k1")
    assert await control.clear_stream_faults("bybit", "k1") == 1
    seen = await buy(ex)
    await eventually(lambda: order_with(ex, seen["id"], "closed"), "a fill after clearing")
    await pump.stop()


@pytest.mark.parametrize("venue", VENUES)
async def test_skipped_events(venue: str, make_exchange: MakeExchange, control: SimulatorControl) -> None:
    """Binance skip 2: both ORDER_TRADE_UPDATEs of the fill are dropped, the ACCOUNT_UPDATE arrives. Bybit
    skip 2: the order and execution messages are dropped, the position arrives."""
    ex = make_exchange(venue, snapshot=False)
    await ex.load_markets()
    pumps = [Pump(ex, "watch_orders"), Pump(ex, "watch_my_trades"), Pump(ex, "watch_positions")]
    await connected(control)
    if venue == "bybit":  # a skip counts events some connection would receive: subscriptions first
        await subscribed(control, 3)
    faults = await control.skip_stream_events(venue, "k1", 2)
    assert faults == [{"venue": venue, "api_key": "k1", "skip": 2, "delay": 0, "delay_seconds": 0.0, "refuse_auth": 0}]
    placed = await buy(ex)
    await eventually(lambda: any(p["contracts"] for p in positions(ex)), "the position update")
    await asyncio.sleep(0.1)
    assert order_with(ex, placed["id"], "closed") is None
    assert not trades(ex)
    state = await control.streams("k1")
    assert state["faults"] == []
    assert state["connections"][0]["skipped"] == 2
    second = await buy(ex)  # the fault is used up
    await eventually(lambda: order_with(ex, second["id"], "closed"), "the next fill")
    for pump in pumps:
        await pump.stop()


@pytest.mark.parametrize("venue", VENUES)
async def test_delayed_events_keep_their_order(
    venue: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange(venue, snapshot=False)
    await ex.load_markets()
    frames = record_messages(ex)
    pump = Pump(ex, "watch_orders")
    await connected(control)
    if venue == "bybit":
        await eventually(lambda: len([f for f in frames if f.get("op") == "subscribe"]) == 1, "the subscription")
    before = len(frames)
    await control.delay_stream_events(venue, "k1", 1, 0.8)
    started = time.monotonic()
    placed = await buy(ex)
    await asyncio.sleep(0.4)
    assert len(frames) == before  # the first event is held, and the others wait behind it
    await eventually(lambda: order_with(ex, placed["id"], "closed"), "the delayed fill")
    assert time.monotonic() - started >= 0.8
    await pump.stop()


@pytest.mark.parametrize(("venue", "offset_ms"), [("binanceusdm", 24 * HOUR_MS), ("bybit", 11 * 60_000)])
async def test_the_venues_end_old_and_idle_connections(
    venue: str, offset_ms: int, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    """Binance ends a connection at 24 hours, Bybit one without pings or data for 10 minutes (simulator clock)."""
    ex = make_exchange(venue, snapshot=False)
    await ex.load_markets()
    pump = Pump(ex, "watch_orders", retry=False)
    await connected(control)
    await control.settings(clock_offset_ms=offset_ms)
    await eventually(lambda: pump.errors, "the connection to end")
    assert isinstance(pump.errors[0], NetworkError)
    assert "closing code 1001" in str(pump.errors[0])


# ------------------------------------------------------------------------------------ control API


async def test_inspection_and_reset(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    bn, by = make_exchange("binanceusdm", "kb", snapshot=False), make_exchange("bybit", "ky", snapshot=False)
    await by.load_markets()
    pumps = [Pump(bn, "watch_orders"), Pump(by, "watch_orders")]
    await connected(control, "kb")
    await connected(control, "ky")
    state = await control.streams()
    assert sorted((c["venue"], c["api_key"]) for c in state["connections"]) == [
        ("binanceusdm", "kb"),
        ("bybit", "ky"),
    ]
    assert [k["api_key"] for k in state["listen_keys"]] == ["kb"]
    await control.refuse_stream_auth("bybit", "ky", 2)
    assert (await control.streams("ky"))["faults"][0]["refuse_auth"] == 2
    assert await control.clear_stream_faults() == 1

    await control.reset()
    await eventually(lambda: all(p.errors for p in pumps), "both watches to fail")
    assert (await control.streams())["listen_keys"] == []
    for pump in pumps:
        await pump.stop()


async def test_control_refuses_bad_stream_requests(control: SimulatorControl) -> None:
    with pytest.raises(SimulatorControlError, match="venue"):
        await control.skip_stream_events("okx", "k1", 1)
    with pytest.raises(SimulatorControlError, match="count"):
        await control.delay_stream_events("bybit", "k1", 0, 1.0)
    with pytest.raises(SimulatorControlError, match="mode"):
        await control.drop_streams(mode="explode")
    with pytest.raises(SimulatorControlError, match="seconds"):
        await control.silence_streams(seconds=-1)
    assert await control.expire_listen_key("nobody") is None
    assert await control.drop_streams() == 0
