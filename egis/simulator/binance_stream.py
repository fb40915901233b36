"""Binance USD-M user data stream of the simulator: the listen-key websocket and its account events.

Sources: the USD-M docs, User Data Streams (https://developers.binance.com/docs/derivatives/
usds-margined-futures/user-data-streams, mirrored as markdown in rosssaunders/coincise
docs/binance/usdm/private_websocket_api.md), quoted per behaviour below, and ccxt.pro 4.5.90
(``ccxt/pro/binance.py``) for what the client reads.

Connection: ``GET /private/ws?listenKey=<key>``, the URL ccxt.pro 4.5.90 builds for linear accounts
(``get_private_ws_url``: the ``wss://fstream.binance.com/ws`` key minus ``/ws`` plus ``/private/ws``,
Binance's newer private endpoint), and the documented legacy ``GET /ws/<listenKey>`` ("User Data Streams
are accessed at /ws/<listenKey>", User Data Streams > Connect). The key must be active. Nothing is
subscribed: "A listenKey is a stream". Protocol pings are answered with pongs (RFC 6455; the venue's
connections are kept alive with ping frames) unless the connection is silenced by a stream fault.

Events per fill (every fill passes through ``SimulatorCore._fill``: API orders and exchange-side closes,
liquidations and ADL made through the control API alike):
1. ``ORDER_TRADE_UPDATE`` with ``x``/``X`` NEW: "When new order created, order status changed will push
   such event" (Event: Order Update);
2. ``ORDER_TRADE_UPDATE`` with the execution, ``X`` FILLED (``x`` TRADE, or CALCULATED for a liquidation);
3. ``ACCOUNT_UPDATE`` with the USDT balance and the changed position ("Only symbols of changed positions
   will be pushed", Event: Balance and Position Update), reason ``m`` ORDER.
The simulator always sends them in this order; on the venue the order of different event types is not
guaranteed ("Strongly recommend you order your updates using E").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

from egis.simulator.binance import AUTO_CLOSE_TYPES, client_order_id
from egis.simulator.core import Account, Fill, Order, OrderSource, Position, SimulatorCore, Trade
from egis.simulator.streams import BINANCE, StreamConnection, StreamEvent, StreamHub
from egis.simulator.wire import fmt

PRIVATE_WS_PATH = "/private/ws"
LEGACY_WS_PREFIX = "/ws/"

# Liquidation orders: "Order Type ... LIQUIDATION" and "Execution Type ... CALCULATED - Liquidation
# Execution" (Event: Order Update); ccxt.pro files an order update as the account's own liquidation only
# when ``o`` is LIQUIDATION (binance.py handle_my_liquidation). ADL orders are only said to carry
# ``c`` "adl_autoclose" (same page): their type is the LIMIT/GTC of User's Force Orders (see binance.py
# AUTO_CLOSE_TYPES) and their execution TRADE, a guess.
_STREAM_TYPES = {OrderSource.LIQUIDATION: ("LIQUIDATION", "IOC"), OrderSource.ADL: AUTO_CLOSE_TYPES[OrderSource.ADL]}
_EXECUTION_TYPES = {OrderSource.LIQUIDATION: "CALCULATED"}


class BinanceStream:
    """Serves the USD-M user data stream of one simulator (see the module docstring)."""

    def __init__(self, core: SimulatorCore, hub: StreamHub) -> None:
        self._core = core
        self._hub = hub
        core.fill_listeners.append(self._on_fill)

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` is one of the stream's websocket paths."""
        return path == PRIVATE_WS_PATH or path.startswith(LEGACY_WS_PREFIX)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PRIVATE_WS_PATH, self._connect), web.get(LEGACY_WS_PREFIX + "{listen_key}", self._connect)]

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        listen_key = request.query.get("listenKey") or request.match_info.get("listen_key", "")
        key = self._hub.listen_keys.lookup(listen_key)
        if key is None:
            # A key must be valid to connect ("<validateListenKey> must be a valid listenKey when you establish
            # a connection", USD-M change log, 2021-11, the fstream-auth connection method); the refusal's form
            # is a guess: the REST answer for an unknown key, -1125 INVALID_LISTEN_KEY, before any upgrade.
            return web.json_response({"code": -1125, "msg": "This listenKey does not exist."}, status=400)
        ws = web.WebSocketResponse(autoping=False)  # pongs by hand, so that a silenced connection stops them
        await ws.prepare(request)
        conn = self._hub.open(BINANCE, request, ws, api_key=key.api_key)
        conn.listen_key = key.key
        try:
            async for message in ws:
                if message.type is WSMsgType.PING:
                    await self._hub.pong(conn, message.data)
                # Text frames (live SUBSCRIBE requests of market streams) are not served: ccxt sends none here.
        finally:
            await self._hub.closed(conn)
        return ws

    # ------------------------------------------------------------------ events

    def _on_fill(self, fill: Fill) -> None:
        api_key = fill.order.api_key
        if not self._hub.connections(BINANCE, api_key):
            return
        account = self._core.account(api_key)
        position = account.position(fill.order.symbol, fill.order.position_side)
        now = self._core.now_ms()
        events = [
            _order_update(fill.order, fill.trade, now, new=True),
            _order_update(fill.order, fill.trade, now, new=False),
            self._account_update(account, position, fill.trade, now),
        ]
        self._hub.publish(BINANCE, api_key, (StreamEvent(e) for e in events), _every_event)

    def _account_update(self, account: Account, position: Position, trade: Trade, now: int) -> dict[str, Any]:
        """``ACCOUNT_UPDATE`` (Event: Balance and Position Update): ``a.B`` balances (``wb`` wallet, ``cw``
        cross wallet, ``bc`` "balance change except PnL and commission"), ``a.P`` the changed position
        (``pa`` signed amount, ``ep`` entry, ``bep`` breakeven, ``cr`` "(Pre-fee) Accumulated Realized",
        ``up`` unrealized PnL, ``mt`` margin type, ``iw`` isolated wallet, ``ps`` position side) and ``a.m``
        the reason; ORDER for every fill, liquidations and ADL included (the documented reasons have no
        liquidation-specific one)."""
        wallet = fmt(account.wallet_balance)
        mark = self._core.mark_prices[position.symbol]
        trades = (t for t in account.trades if (t.symbol, t.position_side) == (position.symbol, position.side))
        realized = sum((t.realized_pnl for t in trades), Decimal(0))
        return {
            "e": "ACCOUNT_UPDATE",
            "E": now,
            "T": trade.time_ms,
            "a": {
                "m": "ORDER",
                "B": [{"a": "USDT", "wb": wallet, "cw": wallet, "bc": "0"}],
                "P": [
                    {
                        "s": position.symbol,
                        "pa": fmt(position.quantity),
                        "ep": fmt(position.entry_price),
                        "bep": fmt(position.entry_price),
                        "cr": fmt(realized),
                        "up": fmt(position.unrealized_pnl(mark)),
                        "mt": "cross",
                        "iw": "0",
                        "ps": position.side.value,
                        "ma": "USDT",
                    }
                ],
            },
        }


def _every_event(_: StreamConnection, __: str | None) -> bool:
    return True  # the connection is the subscription


def _order_update(order: Order, trade: Trade, now: int, *, new: bool) -> dict[str, Any]:
    """``ORDER_TRADE_UPDATE`` (Event: Order Update), fields as documented: ``o.s`` symbol, ``c`` client order
    id ("autoclose-" liquidation, "adl_autoclose" ADL), ``S`` side, ``o`` type, ``f`` time in force, ``q``
    quantity, ``p`` price, ``ap`` average price, ``sp`` stop price, ``x`` execution type, ``X`` status,
    ``i`` order id, ``l`` last filled quantity, ``z`` accumulated filled quantity, ``L`` last filled price,
    ``N``/``n`` commission asset and amount, ``T`` trade time, ``t`` trade id, ``b``/``a`` bid/ask notional,
    ``m`` maker, ``R`` reduce only, ``wt`` working type, ``ot`` original type, ``ps`` position side,
    ``cp`` close-all, ``rp`` realized profit of the trade, ``pP``, ``si``, ``ss``, ``V`` STP mode, ``pm``
    price match, ``gtd``, ``er`` expire reason. ccxt.pro reads ``s,c,S,o,q,p,ap,x,X,i,l,z,L,n,N,T,t,m,R,ps``
    and files a trade only when ``x`` is TRADE (binance.py handle_order_update, handle_my_trade)."""
    order_type, time_in_force = _STREAM_TYPES.get(order.source, ("MARKET", "GTC"))
    auto_close = order.source in AUTO_CLOSE_TYPES
    filled = not new
    body = {
        "s": order.symbol,
        "c": client_order_id(order),
        "S": order.side.value,
        "o": order_type,
        "f": time_in_force,
        "q": fmt(order.quantity),
        "p": fmt(order.avg_price) if auto_close else "0",
        "ap": fmt(order.avg_price) if filled else "0",
        "sp": "0",
        "x": _EXECUTION_TYPES.get(order.source, "TRADE") if filled else "NEW",
        "X": order.status.value if filled else "NEW",
        "i": order.id,
        "l": fmt(trade.quantity) if filled else "0",
        "z": fmt(order.executed_qty) if filled else "0",
        "L": fmt(trade.price) if filled else "0",
        "N": "USDT",
        "n": fmt(trade.fee) if filled else "0",
        "T": trade.time_ms if filled else order.created_ms,
        "t": trade.id if filled else 0,
        "b": "0",
        "a": "0",
        "m": False,
        "R": order.reduce_only and not auto_close,
        "wt": "CONTRACT_PRICE",
        "ot": order_type,
        "ps": order.position_side.value,
        "cp": False,
        "rp": fmt(trade.realized_pnl) if filled else "0",
        "pP": False,
        "si": 0,
        "ss": 0,
        "V": "EXPIRE_MAKER",
        "pm": "NONE",
        "gtd": 0,
        "er": "0",
    }
    return {"e": "ORDER_TRADE_UPDATE", "E": now, "T": trade.time_ms, "o": body}
