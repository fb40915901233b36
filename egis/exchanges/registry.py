"""One gateway per exchange account per worker process, built on first use.

Account files are re-read when they change (the demo rewrites simulator URLs), so a long-
running worker picks up new credentials without a restart.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncEngine

from egis.exchanges.accounts import AccountConfig, load_account
from egis.exchanges.backoff import Backoff
from egis.exchanges.base import Gateway
from egis.exchanges.ccxt_gateway import CcxtGateway
from egis.exchanges.paper import PaperGateway
from egis.models import Exchange


def venue_of(config: AccountConfig) -> str:
    """The endpoint an account calls (its IP-wide limits are shared with every account calling it)."""
    return config.base_url or ("testnet" if config.sandbox else "live")


def build_gateway(exchange: Exchange, account: str, config: AccountConfig, engine: AsyncEngine) -> Gateway:
    if exchange is Exchange.PAPER:
        source = PaperGateway.default_price_source(config)
        prices = CcxtGateway(
            source.exchange,
            f"{account}-prices",
            AccountConfig(exchange=source.exchange, base_url=source.base_url, sandbox=source.sandbox),
        )
        return PaperGateway(account, config, engine, prices)
    return CcxtGateway(exchange, account, config, Backoff(exchange.value, account, engine, venue_of(config)))


class Gateways:
    def __init__(self, accounts_dir: Path, engine: AsyncEngine) -> None:
        self.accounts_dir = accounts_dir
        self.engine = engine
        self._gateways: dict[tuple[Exchange, str], tuple[float, Gateway]] = {}
        self._lock = asyncio.Lock()

    def _stamp(self, account: str) -> float:
        path = self.accounts_dir / f"{account}.json"
        return path.stat().st_mtime if path.exists() else 0.0

    async def get(self, exchange: Exchange, account: str) -> Gateway:
        key = (Exchange(exchange), account)
        stamp = self._stamp(account)
        async with self._lock:
            cached = self._gateways.get(key)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            if cached is not None:
                await cached[1].close()
            gateway = build_gateway(key[0], account, load_account(account, key[0], self.accounts_dir), self.engine)
            self._gateways[key] = (stamp, gateway)
            return gateway

    async def close(self) -> None:
        async with self._lock:
            for _, gateway in self._gateways.values():
                await gateway.close()
            self._gateways.clear()
