"""A small local HTTP server that replays recorded exchange answers to the real ccxt client.

Each answer comes from a fixture file under ``fixtures/<venue>/<name>.json``::

    {"_source": {...where the answer was recorded...}, "status": 200, "headers": {...}, "body": <JSON or text>}

A test decides which answer a route gives: ``server.answer("GET", "/fapi/v3/positionRisk", "binanceusdm/...")``.
Routes are ``(method, path)`` with an optional query discriminator (``when={"status": "PreLaunch"}``); the most
specific matching route wins. ``times=n`` makes an answer last for ``n`` requests, after which the next answer
queued on the same route is used (a sequence such as "429, then 200").

Two documented venue rules are applied when asked (``window=...``), because they decide what a real venue returns
for the same recorded rows: the 7-day time window of Binance ``userTrades`` and Bybit ``execution/list`` and
Bybit's ``execType`` filter. Nothing else is simulated: there is no state, no matching, no signature check.
Every request is logged, and a request no route answers gets HTTP 599 (and is logged as unanswered) so a test sees
an unexpected call instead of a plausible answer.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web

FIXTURES = Path(__file__).parent / "fixtures"
WEEK_MS = 7 * 24 * 60 * 60 * 1000

Window = Literal["binance_user_trades", "bybit_execution_list"]


def load_fixture(name: str) -> dict[str, Any]:
    """A fixture by name, e.g. ``"bybit/err_110017"`` (the ``.json`` suffix is optional)."""
    path = FIXTURES / (name if name.endswith(".json") else f"{name}.json")
    data = json.loads(path.read_text())
    if "_source" not in data or "body" not in data:
        raise ValueError(f"fixture {name} must name its _source and hold a body")
    return data


def fixture_body(name: str) -> Any:
    """The recorded body of a fixture (a deep copy: tests may look at it freely)."""
    return copy.deepcopy(load_fixture(name)["body"])


@dataclass
class Answer:
    fixture: str
    status: int
    headers: dict[str, str]
    body: Any
    window: Window | None = None
    times: int | None = None  # None: answers every request


@dataclass
class Route:
    method: str
    path: str
    when: dict[str, str]
    answers: list[Answer] = field(default_factory=list)

    def matches(self, method: str, path: str, params: dict[str, str]) -> bool:
        return (
            method == self.method
            and path == self.path
            and all(params.get(key) == value for key, value in self.when.items())
        )


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    fixture: str | None  # None: no route answered


class FixtureServer:
    """Serves recorded answers on 127.0.0.1 (a free port); use ``async with FixtureServer() as server``."""

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self.log: list[LoggedRequest] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    # ------------------------------------------------------------------ configuration
    def answer(
        self,
        method: str,
        path: str,
        fixture: str,
        *,
        when: dict[str, str] | None = None,
        times: int | None = None,
        window: Window | None = None,
        headers: dict[str, str] | None = None,
    ) -> FixtureServer:
        """Queue the recorded answer ``fixture`` for ``method path`` (and the ``when`` query discriminator)."""
        data = load_fixture(fixture)
        route = self._route(method.upper(), path, when or {})
        route.answers.append(
            Answer(
                fixture=fixture,
                status=int(data.get("status", 200)),
                headers={**data.get("headers", {}), **(headers or {})},
                body=data["body"],
                window=window,
                times=times,
            )
        )
        return self

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.log if (method is None or r.method == method.upper()) and path in (None, r.path)]

    def unanswered(self) -> list[LoggedRequest]:
        return [r for r in self.log if r.fixture is None]

    def _route(self, method: str, path: str, when: dict[str, str]) -> Route:
        for route in self._routes:
            if (route.method, route.path, route.when) == (method, path, when):
                return route
        route = Route(method, path, when)
        self._routes.append(route)
        return route

    # ------------------------------------------------------------------ serving
    async def __aenter__(self) -> FixtureServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        if request.can_read_body:
            text = await request.text()
            if request.content_type == "application/json" and text:
                loaded = json.loads(text)
                if isinstance(loaded, dict):
                    params |= {k: str(v) for k, v in loaded.items()}
            elif text:
                params |= dict(parse_qsl(text, keep_blank_values=True))
        candidates = [r for r in self._routes if r.matches(request.method, request.path, params) and r.answers]
        route = max(candidates, key=lambda r: len(r.when), default=None)
        headers = dict(request.headers)
        if route is None:
            self.log.append(LoggedRequest(request.method, request.path, params, headers, None))
            return web.Response(status=599, text=f"no recorded answer for {request.method} {request.path}")
        answer = route.answers[0]
        if answer.times is not None:
            answer.times -= 1
            if answer.times <= 0 and len(route.answers) > 1:
                route.answers.pop(0)
        self.log.append(LoggedRequest(request.method, request.path, params, headers, answer.fixture))
        body = copy.deepcopy(answer.body)
        if answer.window is not None:
            body = _apply_window(answer.window, body, params)
        if isinstance(body, str):
            content_type = answer.headers.get("Content-Type", "text/plain")
            extra = {k: v for k, v in answer.headers.items() if k.lower() != "content-type"}
            return web.Response(status=answer.status, text=body, headers=extra, content_type=content_type.split(";")[0])
        return web.json_response(body, status=answer.status, headers=answer.headers)


def _window_bounds(params: dict[str, str], now_ms: int) -> tuple[int, int]:
    """The documented 7-day window: only startTime -> [start, start+7d]; only endTime -> [end-7d, end];
    neither -> the last 7 days; both -> as given (the venues refuse more than 7 days)."""
    start = int(params["startTime"]) if "startTime" in params else None
    end = int(params["endTime"]) if "endTime" in params else None
    if start is None and end is None:
        return now_ms - WEEK_MS, now_ms
    if start is None:
        assert end is not None
        return end - WEEK_MS, end
    if end is None:
        return start, start + WEEK_MS
    return start, end


def _apply_window(window: Window, body: Any, params: dict[str, str]) -> Any:
    now_ms = int(time.time() * 1000)
    low, high = _window_bounds(params, now_ms)
    if window == "binance_user_trades":
        return [row for row in body if low <= int(row["time"]) <= high]
    rows = body["result"]["list"]
    exec_type = params.get("execType")
    body["result"]["list"] = [
        row
        for row in rows
        if low <= int(row["execTime"]) <= high and (exec_type is None or row.get("execType") == exec_type)
    ]
    if not body["result"]["list"]:
        body["result"]["nextPageCursor"] = ""
    return body
