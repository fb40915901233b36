"""Instrument definitions of the exchange simulator: the USDT-margined linear perpetuals it lists."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One USDT-margined linear perpetual, described the way both exchanges publish it."""

    symbol: str
    base: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    min_notional: Decimal
    initial_price: Decimal
    quote: str = "USDT"

    @property
    def price_decimals(self) -> int:
        """Number of decimals of the tick size (Binance ``pricePrecision``, Bybit ``priceScale``)."""
        return decimals_of(self.tick_size)

    @property
    def qty_decimals(self) -> int:
        """Number of decimals of the quantity step (Binance ``quantityPrecision``)."""
        return decimals_of(self.qty_step)


def decimals_of(step: Decimal) -> int:
    """Decimal places of a step size: ``0.001`` -> 3, ``1`` -> 0."""
    exponent = step.normalize().as_tuple().exponent
    assert isinstance(exponent, int), "step sizes are finite"
    return max(0, -exponent)


# symbol, tick size, quantity step, minimum quantity, maximum quantity, initial price (min notional: 5 USDT)
_DEFAULTS = (
    ("BTCUSDT", "0.1", "0.001", "0.001", "1000", "60000"),
    ("ETHUSDT", "0.01", "0.001", "0.001", "10000", "3000"),
    ("SOLUSDT", "0.01", "0.1", "1", "100000", "150"),  # min 1 > step 0.1, as on some real markets
    ("DOGEUSDT", "0.00001", "1", "1", "50000000", "0.2"),
    ("CLOUDUSDT", "0.00001", "1", "1", "50000000", "0.13012"),
)

DEFAULT_MARKETS: tuple[MarketSpec, ...] = tuple(
    MarketSpec(
        symbol=symbol,
        base=symbol.removesuffix("USDT"),
        tick_size=Decimal(tick),
        qty_step=Decimal(step),
        min_qty=Decimal(min_qty),
        max_qty=Decimal(max_qty),
        min_notional=Decimal(5),
        initial_price=Decimal(price),
    )
    for symbol, tick, step, min_qty, max_qty, price in _DEFAULTS
)
