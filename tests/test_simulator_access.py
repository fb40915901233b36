# ruff: noqa: F811 (pytest fixtures imported from tests/test_simulator.py are redefined as parameters)
"""Who may call the simulators and how often, like the real venues, through the real ccxt clients:
registered API keys, signatures, rate-limit headers, limits, back-off and bans, and the faults that force
them; the standalone process's keys.

Fixtures and helpers come from tests/test_simulator.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import ccxt.async_support as ccxt
import pytest
from ccxt.async_support.base.exchange import Exchange

from egis.exchanges.local import point_to_local
from egis.simulator import SimulatorControl, SimulatorServer
from tests.test_simulator import (  # noqa: F401 (fixtures)
    BTC,
    CLASSES,
    MakeExchange,
    control,
    ex,
    make_exchange,
    market_order,
    sim,
)

PRIVATE_ROUTE = {"binanceusdm": "GET /fapi/v3/account", "bybit": "GET /v5/account/wallet-balance"}


def unregistered(sim: SimulatorServer, exchange_id: str, api_key: str, secret: str) -> Exchange:
    config = {"apiKey": api_key, "secret": secret, "enableRateLimit": False, "timeout_on_exit": 0}
    return point_to_local(CLASSES[exchange_id](config), sim.base_url)


def headers(ex: Exchange) -> dict[str, str]:
    return {k.lower(): v for k, v in (ex.last_response_headers or {}).items()}


# ---------------------------------------------------------------------------------------- keys and signatures


@pytest.mark.parametrize("exchange_id", ["binanceusdm", "bybit"])
async def test_unknown_keys_and_bad_signatures_are_refused(
    exchange_id: str, sim: SimulatorServer, control: SimulatorControl
) -> None:
    stranger = unregistered(sim, exchange_id, "stranger", "s")
    try:
        await stranger.load_markets()  # public endpoints need no key
        with pytest.raises(ccxt.AuthenticationError, match={"binanceusdm": "-2015", "bybit": "10003"}[exchange_id]):
            await stranger.fetch_balance()
        assert await control.add_api_keys({"stranger": "other-secret"}) == ["stranger"]
        assert "stranger" in await control.api_keys()
        with pytest.raises(ccxt.AuthenticationError, match={"binanceusdm": "-1022", "bybit": "10004"}[exchange_id]):
            await stranger.fetch_balance()  # signed with the wrong secret
        with pytest.raises(ccxt.AuthenticationError):
            await market_order(stranger, "buy", 0.002, "never")
        assert await control.orders() == []  # refused before the matching engine: not in the order log

        await control.settings(check_signatures=False)  # the lenient case, for tests that want it
        assert (await stranger.fetch_balance())["USDT"]["total"] == 10000
        await control.settings(check_signatures=True)
        await control.add_api_keys({"stranger": "s"})
        assert (await stranger.fetch_balance())["USDT"]["total"] == 10000
        assert await control.remove_api_key("stranger") is True
        with pytest.raises(ccxt.AuthenticationError):
            await stranger.fetch_balance()
    finally:
        await stranger.close()


async def test_binance_signature_covers_query_and_body(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm")
    await ex.load_markets()
    real_sign = ex.sign

    def tampered(path: str, api: Any = "public", method: str = "GET", params: Any = None, *args: Any) -> Any:
        request = real_sign(path, api, method, params or {}, *args)
        if request.get("body"):
            request["body"] = request["body"].replace("quantity=0.002", "quantity=0.02")
        return request

    ex.sign = tampered  # type: ignore[method-assign]
    with pytest.raises(ccxt.AuthenticationError, match="-1022"):
        await market_order(ex, "buy", 0.002, "tampered")
    ex.sign = real_sign  # type: ignore[method-assign]
    await market_order(ex, "buy", 0.002, "genuine")
    assert [e["client_order_id"] for e in await control.orders("k1")] == ["genuine"]


# ---------------------------------------------------------------------------------------- headers


async def test_binance_rate_limit_headers(make_exchange: MakeExchange) -> None:
    ex = make_exchange("binanceusdm")
    await ex.load_markets()
    assert headers(ex)["x-mbx-used-weight-1m"] == "1"  # exchangeInfo
    await ex.fetch_balance()
    assert headers(ex)["x-mbx-used-weight-1m"] == "6"  # + account (5)
    await ex.fetch_tickers()
    assert headers(ex)["x-mbx-used-weight-1m"] == "46"  # + 24hr tickers without a symbol (40)
    await market_order(ex, "buy", 0.002, "o-1")
    h = headers(ex)
    assert h["x-mbx-used-weight-1m"] == "46"  # New Order weighs 0 on the IP limit
    assert (h["x-mbx-order-count-10s"], h["x-mbx-order-count-1m"]) == ("1", "1")
    with pytest.raises(ccxt.InvalidOrder):
        await market_order(ex, "buy", 0.001, "o-2")  # -4164: errors carry the headers too
    assert headers(ex)["x-mbx-order-count-10s"] == "2"


async def test_bybit_rate_limit_headers(make_exchange: MakeExchange) -> None:
    ex = make_exchange("bybit")
    await ex.load_markets()
    assert headers(ex)["x-bapi-limit"] == "600"  # a public endpoint: the IP window
    await ex.fetch_positions([BTC])
    h = headers(ex)
    assert (h["x-bapi-limit"], h["x-bapi-limit-status"]) == ("50", "49")
    assert abs(int(h["x-bapi-limit-reset-timestamp"]) - ex.milliseconds()) < 5000
    await market_order(ex, "buy", 0.01, "o-1")
    await market_order(ex, "buy", 0.01, "o-2")
    h = headers(ex)
    assert (h["x-bapi-limit"], h["x-bapi-limit-status"]) == ("10", "8")


@pytest.mark.parametrize("exchange_id", ["binanceusdm", "bybit"])
async def test_rate_limit_headers_can_be_switched_off(
    exchange_id: str, make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    """The setting exists for `egis selftest`'s "differs" row: no rate-limit header on any answer, not
    even on an order; a throttling answer keeps its Retry-After (it is part of that answer)."""
    ex = make_exchange(exchange_id)
    await ex.load_markets()
    names = {"binanceusdm": "x-mbx-used-weight-1m", "bybit": "x-bapi-limit"}
    assert names[exchange_id] in headers(ex)
    await control.settings(rate_limit_headers=False)
    await ex.fetch_positions([BTC])
    await market_order(ex, "buy", 0.002, "o-1")
    assert not [h for h in headers(ex) if h.startswith(("x-mbx-", "x-bapi-"))]
    await control.add_fault(PRIVATE_ROUTE[exchange_id], "rate_limit")
    with pytest.raises((ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
        await ex.fetch_balance()
    if exchange_id == "binanceusdm":
        assert "retry-after" in headers(ex)
    await control.settings(rate_limit_headers=True)
    await ex.fetch_positions([BTC])
    assert names[exchange_id] in headers(ex)


# ---------------------------------------------------------------------------------------- limits and bans


async def test_binance_weight_limit_429_then_418_ban_when_not_backing_off(
    make_exchange: MakeExchange, control: SimulatorControl
) -> None:
    ex = make_exchange("binanceusdm")
    await ex.load_markets()  # weight 1
    await control.settings(binance_weight_limit=12, binance_ban_seconds=120)
    await ex.fetch_balance()
    await ex.fetch_balance()  # 11
    with pytest.raises(ccxt.DDoSProtection, match=r"429.*-1003.*current limit of IP"):
        await ex.fetch_balance()  # 16 > 12
    assert 1 <= int(headers(ex)["retry-after"]) <= 60
    with pytest.raises(ccxt.DDoSProtection, match=r"418.*banned until"):
        await ex.fetch_ticker(BTC)  # called again during the back-off: banned, public endpoints too
    assert int(headers(ex)["retry-after"]) == 120
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        await ex.fetch_balance()
    [ban] = await control.bans()
    assert ban["venue"] == "binanceusdm" and ban["banned_until"] > ex.milliseconds() + 100_000
    assert await control.lift_bans() == 1
    await control.settings(binance_weight_limit=2400)
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000


async def test_binance_bans_grow_for_repeat_offenders(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    """ "IP bans are tracked and scale in duration for repeat offenders, from 2 minutes to 3 days"."""
    ex = make_exchange("binanceusdm")
    for n, expected in enumerate(("120", "240")):
        await control.settings(clock_offset_ms=n * 3_600_000)  # an hour later: the first ban is over
        await control.add_fault("GET /fapi/v1/time", "ban", seconds=60)
        with pytest.raises(ccxt.DDoSProtection, match="429"):
            await ex.fetch_time()
        assert headers(ex)["retry-after"] == "60"
        with pytest.raises(ccxt.DDoSProtection, match="418"):
            await ex.fetch_time()
        assert headers(ex)["retry-after"] == expected


async def test_binance_order_count_limit(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("binanceusdm")
    await control.settings(binance_order_limit_10s=2)
    await market_order(ex, "buy", 0.002, "o-1")
    await market_order(ex, "buy", 0.002, "o-2")
    with pytest.raises(ccxt.DDoSProtection, match=r"-1015.*2 orders per 10 SECOND"):
        await market_order(ex, "buy", 0.002, "o-3")
    assert [e["client_order_id"] for e in await control.orders("k1")] == ["o-1", "o-2"]


async def test_bybit_endpoint_limit_is_10006_per_uid(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    k1, k2 = make_exchange("bybit", "k1"), make_exchange("bybit", "k2")
    await control.settings(bybit_endpoint_limit=2)
    await k1.fetch_positions([BTC])
    await k1.fetch_positions([BTC])
    with pytest.raises(ccxt.RateLimitExceeded, match="10006"):
        await k1.fetch_positions([BTC])
    assert headers(k1)["x-bapi-limit-status"] == "0"
    assert await k2.fetch_positions([BTC])  # another UID has its own window
    assert (await k1.fetch_balance())["USDT"]["total"] == 10000  # and so has another endpoint
    await asyncio.sleep(1.05)  # a rolling one-second window
    assert await k1.fetch_positions([BTC])


async def test_bybit_ip_limit_is_403_and_a_ban(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    ex = make_exchange("bybit")
    await control.settings(bybit_ip_limit=5, bybit_ip_ban_seconds=600)  # requests per IP per 5 seconds
    await ex.load_markets()  # 2 requests
    for _ in range(3):
        await ex.fetch_ticker(BTC)
    with pytest.raises(ccxt.RateLimitExceeded, match="403"):
        await ex.fetch_ticker(BTC)
    await control.settings(bybit_ip_limit=600)
    with pytest.raises(ccxt.RateLimitExceeded, match="access too frequent"):
        await ex.fetch_balance()  # still banned: "wait for at least 10 minutes"
    assert [b["venue"] for b in await control.bans()] == ["bybit"]
    await control.lift_bans()
    assert (await ex.fetch_ticker(BTC))["last"] == 60000


async def test_ban_faults(make_exchange: MakeExchange, control: SimulatorControl) -> None:
    binance, bybit = make_exchange("binanceusdm"), make_exchange("bybit")
    await control.add_fault(PRIVATE_ROUTE["bybit"], "ban", seconds=30)
    with pytest.raises(ccxt.RateLimitExceeded, match="403"):
        await bybit.fetch_balance()
    with pytest.raises(ccxt.RateLimitExceeded, match="403"):
        await bybit.fetch_ticker(BTC)  # the whole IP is refused
    await control.add_fault(PRIVATE_ROUTE["binanceusdm"], "ban", seconds=30)
    with pytest.raises(ccxt.DDoSProtection, match="429"):
        await binance.fetch_balance()
    assert headers(binance)["retry-after"] == "30"
    with pytest.raises(ccxt.DDoSProtection, match="418"):
        await binance.fetch_time()
    assert await control.lift_bans() == 2


async def test_rate_limit_fault_records_no_back_off(ex: Exchange, control: SimulatorControl) -> None:
    await control.add_fault(PRIVATE_ROUTE[ex.id], "rate_limit")
    with pytest.raises((ccxt.DDoSProtection, ccxt.RateLimitExceeded)):
        await ex.fetch_balance()
    assert (await ex.fetch_balance())["USDT"]["total"] == 10000  # an immediate retry is not banned
    assert await control.bans() == []


# ---------------------------------------------------------------------------------------- standalone


async def test_standalone_process_takes_api_keys() -> None:
    env = {**os.environ, "EGIS_SIMULATOR_API_KEYS": "env-key:env-secret"}
    command = [sys.executable, "-m", "egis.simulator", "--exchange", "bybit", "--api-key", "arg-key:arg-secret"]
    process = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE, env=env)
    assert process.stdout is not None
    clients: list[Exchange] = []
    try:
        line = (await asyncio.wait_for(process.stdout.readline(), 15)).decode().strip()
        url = line.rsplit(" ", 1)[1]
        for key, secret in (("arg-key", "arg-secret"), ("env-key", "env-secret"), ("nobody", "x")):
            config = {"apiKey": key, "secret": secret, "enableRateLimit": False, "timeout_on_exit": 0}
            clients.append(point_to_local(ccxt.bybit(config), url))
        assert (await clients[0].fetch_balance())["USDT"]["total"] == 10000
        assert (await clients[1].fetch_balance())["USDT"]["total"] == 10000
        with pytest.raises(ccxt.AuthenticationError, match="10003"):
            await clients[2].fetch_balance()
    finally:
        await asyncio.gather(*(c.close() for c in clients))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0


async def test_standalone_rejects_a_malformed_api_key() -> None:
    command = [sys.executable, "-m", "egis.simulator", "--exchange", "bybit", "--api-key", "no-secret"]
    process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 2 and b"KEY:SECRET" in stderr
