"""Bybit v5 private websocket of the simulator: ``auth``, ``subscribe``, ``ping`` and the account topics.

Sources: bybit-exchange/docs ``docs/v5/websocket/wss-authentication.mdx`` (slug ``/v5/ws/connect``:
connection, authentication, heartbeat, subscription answers) and ``docs/v5/websocket/private/
{order,execution,position}.mdx`` (topics and payloads), quoted per behaviour below; real answers quoted in
public issues; ccxt.pro 4.5.90 (``ccxt/pro/bybit.py``) for what the client sends and reads.

Connection: ``GET /v5/private`` ("WebSocket private stream ... wss://stream.bybit.com/v5/private").
Requests are JSON text frames with ``op`` (and an optional ``req_id``, echoed in the answer):
- ``auth`` with ``args`` [api key, expires, signature]: signature = hex HMAC-SHA256 of ``"GET/realtime" +
  expires`` with the API secret, ``expires`` a millisecond timestamp that "is greater than your current
  timestamp" (no upper bound is documented, none is applied);
- ``subscribe`` / ``unsubscribe`` with ``args`` topics: the all-in-one ``order``, ``execution``,
  ``position`` or their ``.linear`` categorised forms ("All-In-One topic and Categorised topic cannot be
  in the same subscription request"; not checked);
- ``ping``: answered with the private pong.
Events go only to authenticated connections and only for subscribed topics. Protocol-level ping frames are
answered too. A silenced connection (stream fault) answers nothing.

Events per fill (every fill passes through ``SimulatorCore._fill``: API orders and exchange-side closes,
liquidations and ADL made through the control API alike), in this order: ``order`` (the order, Filled),
``execution`` (the fill: ``execType`` Trade, BustTrade for a liquidation, AdlTrade for ADL), ``position``
(the changed position; a closed one as ``side`` "" and ``size`` "0"). Market orders are pushed once,
Filled (no New message; the venue's sequence for market orders is not documented). The rows reuse the
REST row builders of ``bybit.py`` plus the fields the topics add (``category`` and those listed below).
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any

from aiohttp import WSMsgType, web

from egis.simulator.bybit import BybitFrontEnd, execution_json, order_json
from egis.simulator.core import Fill, SimulatorCore
from egis.simulator.streams import BYBIT, StreamConnection, StreamEvent, StreamHub
from egis.simulator.wire import fmt, hmac_sha256_hex

PRIVATE_WS_PATH = "/v5/private"
ACCOUNT_TOPICS = ("order", "execution", "position")  # the simulator's push order per fill
_SERVED_TOPICS = frozenset(ACCOUNT_TOPICS) | {f"{topic}.linear" for topic in ACCOUNT_TOPICS}
# Failed auth: {"success": false, "ret_msg": "Params Error", "op": "auth", "conn_id": ...}, the real v5 answer
# to an ``expires`` that had passed on arrival (bybit-exchange/pybit#152, #300; api-usage-examples#70). The
# v5 answers to an unknown key or a wrong signature are not documented; the simulator gives the same frame.
AUTH_FAILED = "Params Error"
# Subscribing before auth: "error:topic:order needs auth first", a real answer of the older private stream
# (verata-veritatis/pybit#37); the v5 wording is not documented.
_NEEDS_AUTH = "error:topic:{} needs auth first"


class BybitStream:
    """Serves the Bybit v5 private stream of one simulator (see the module docstring)."""

    def __init__(self, core: SimulatorCore, hub: StreamHub, front_end: BybitFrontEnd) -> None:
        self._core = core
        self._hub = hub
        self._front_end = front_end
        core.fill_listeners.append(self._on_fill)

    @staticmethod
    def owns(path: str) -> bool:
        """Whether ``path`` is the stream's websocket path."""
        return path == PRIVATE_WS_PATH

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PRIVATE_WS_PATH, self._connect)]

    async def _connect(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(autoping=False)  # pongs by hand, so that a silenced connection stops them
        await ws.prepare(request)
        conn = self._hub.open(BYBIT, request, ws)
        try:
            async for message in ws:
                if message.type is WSMsgType.PING:
                    await self._hub.pong(conn, message.data)
                elif message.type is WSMsgType.TEXT:
                    await self._on_request(conn, message.data)
        finally:
            await self._hub.closed(conn)
        return ws

    # ------------------------------------------------------------------ requests

    async def _on_request(self, conn: StreamConnection, text: str) -> None:
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            await self._hub.reply(conn, {"success": False, "ret_msg": "error:parse fail", "conn_id": conn.id})
            return
        op, req_id = request.get("op"), request.get("req_id")
        echo = {} if req_id is None else {"req_id": req_id}
        args = request.get("args")
        if op == "auth":
            await self._auth(conn, args, echo)
        elif op in ("subscribe", "unsubscribe"):
            await self._subscribe(conn, op, args, echo)
        elif op == "ping":
            # "Pong message example of private channels": {"req_id": "test", "op": "pong", "args":
            # ["1675418560633"], "conn_id": "cfcb4ocsvfriu23r3er0-1b"} (wss-authentication.mdx, "How to Send the
            # Heartbeat Packet"). ccxt.pro sends {"req_id": n, "op": "ping"} every 18 s and counts any message
            # with op "pong" (bybit.py ping, handle_message).
            pong = echo | {"op": "pong", "args": [str(self._core.now_ms())], "conn_id": conn.id}
            await self._hub.reply(conn, pong)
        else:
            # "error:invalid op": a real answer to an unknown op (bybit-exchange/api-connectors#99).
            await self._hub.reply(conn, {"success": False, "ret_msg": "error:invalid op", "conn_id": conn.id} | echo)

    async def _auth(self, conn: StreamConnection, args: Any, echo: dict[str, Any]) -> None:
        """``{"op": "auth", "args": [api_key, expires, signature]}``; success answers ``{"success": true,
        "ret_msg": "", "op": "auth", "conn_id": ...}`` ("Successful authentication sample response",
        wss-authentication.mdx). The control API's ``refuse_stream_auth`` makes it fail."""
        api_key = self._authenticated_key(args)
        if api_key is None or self._hub.take_auth_refusal(BYBIT, api_key):
            await self._hub.reply(
                conn, {"success": False, "ret_msg": AUTH_FAILED, "op": "auth", "conn_id": conn.id} | echo
            )
            return
        conn.api_key = api_key
        await self._hub.reply(conn, {"success": True, "ret_msg": "", "op": "auth", "conn_id": conn.id} | echo)

    def _authenticated_key(self, args: Any) -> str | None:
        """The API key of valid ``auth`` args: registered key, ``expires`` in the future on the simulator
        clock, signature = hex HMAC-SHA256(secret, "GET/realtime" + expires) (wss-authentication.mdx,
        "Generate signature"). The expiry and signature checks follow the ``check_signatures`` setting."""
        if not isinstance(args, list) or len(args) != 3:
            return None
        api_key, expires, signature = args
        secret = self._core.api_keys.get(api_key) if isinstance(api_key, str) else None
        if secret is None:
            return None
        if not self._core.settings.check_signatures:
            return api_key
        if isinstance(expires, bool) or not isinstance(expires, int | str) or not isinstance(signature, str):
            return None
        try:
            expires_ms = int(expires)
        except ValueError:
            return None
        if expires_ms <= self._core.now_ms():
            return None
        expected = hmac_sha256_hex(secret, f"GET/realtime{expires}")
        return api_key if hmac.compare_digest(signature.lower(), expected) else None

    async def _subscribe(self, conn: StreamConnection, op: str, args: Any, echo: dict[str, Any]) -> None:
        """Private subscription answer ``{"success": true, "ret_msg": "", "op": "subscribe", "conn_id": ...}``
        ("Understanding the Subscription Response", Private tab), with the request's ``req_id``."""
        topics = args if isinstance(args, list) else []
        unserved = [t for t in topics if t not in _SERVED_TOPICS]
        failure = {"success": False, "op": op, "conn_id": conn.id} | echo
        if not topics or unserved:
            # The venue serves more private topics (wallet, greeks, dcp, execution.fast...); the simulator
            # refuses them rather than accept a subscription it would never feed.
            await self._hub.reply(conn, failure | {"ret_msg": f"simulator: topics not served: {unserved or topics}"})
            return
        if op == "subscribe" and conn.api_key is None:
            await self._hub.reply(conn, failure | {"ret_msg": _NEEDS_AUTH.format(topics[0])})
            return
        if op == "subscribe":
            conn.topics.update(topics)
        else:
            conn.topics.difference_update(topics)
        await self._hub.reply(conn, {"success": True, "ret_msg": "", "op": op, "conn_id": conn.id} | echo)

    # ------------------------------------------------------------------ events

    def _on_fill(self, fill: Fill) -> None:
        api_key = fill.order.api_key
        if not self._hub.connections(BYBIT, api_key):
            return
        account = self._core.account(api_key)
        order, trade = fill.order, fill.trade
        position = account.position(order.symbol, order.position_side)
        closed_pnl = trade.realized_pnl - trade.fee if trade.closed_qty else 0
        # order.mdx: "category", "closedPnl" ("Closed profit and loss for each close position order"),
        # "cumFeeDetail" ("linear, spot: Cumulative trading fee details instead of cumExecFee").
        order_row = order_json(order) | {
            "category": "linear",
            "closedPnl": fmt(closed_pnl) if closed_pnl else "0",
            "cumFeeDetail": {"USDT": fmt(order.fee)},
            "feeCurrency": "",
        }
        # execution.mdx: "category", "execPnl" ("Profit and Loss for each close position execution. The value
        # keeps consistent with the field "cashFlow" in the Get Transaction Log", i.e. before fees), "isLeverage".
        execution_row = execution_json(trade, order) | {
            "category": "linear",
            "execPnl": fmt(trade.realized_pnl),
            "isLeverage": "0",
            "marketUnit": "",
        }
        # position.mdx: the REST row with "entryPrice" for "avgPrice", plus "category", "breakEvenPrice",
        # "positionIMByMp"/"positionMMByMp" ("the same value as positionIM"/"positionMM"), "sessionAvgPrice";
        # a flat position has side "" ("return an empty string "" for an empty position") and size "0".
        rest_row = self._front_end.position_row(account, position)
        entry = rest_row.pop("avgPrice")
        position_row = rest_row | {
            "category": "linear",
            "entryPrice": entry,
            "breakEvenPrice": entry,
            "positionIMByMp": rest_row["positionIM"],
            "positionMMByMp": rest_row["positionMM"],
            "sessionAvgPrice": "",
        }
        now = self._core.now_ms()
        events = [
            StreamEvent(_message("order", [order_row], now), "order"),
            StreamEvent(_message("execution", [execution_row], now), "execution"),
            StreamEvent(_message("position", [position_row], now), "position"),
        ]
        self._hub.publish(BYBIT, api_key, events, _subscribed)


def _subscribed(conn: StreamConnection, topic: str | None) -> bool:
    return topic in conn.topics or f"{topic}.linear" in conn.topics


def _message(topic: str, data: list[dict[str, Any]], now: int) -> dict[str, Any]:
    """A topic message: ``{"id": "<message id>", "topic": ..., "creationTime": <ms>, "data": [...]}``
    (order.mdx, execution.mdx, position.mdx: "id Message ID", "creationTime Data created timestamp (ms)")."""
    return {"id": f"{secrets.token_hex(16)}", "topic": topic, "creationTime": now, "data": data}
