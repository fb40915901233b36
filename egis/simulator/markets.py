"""Instrument definitions of the exchange simulator: the USDT-margined linear perpetuals it lists."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class MarketSpec:
    """One USDT-margined linear perpetual, described the way both exchanges publish it.

    The minimum order value differs per venue, so each front end publishes (and enforces) its own:
    ``binance_min_notional`` in the MIN_NOTIONAL filter of ``/fapi/v1/exchangeInfo``,
    ``bybit_min_notional`` as ``lotSizeFilter.minNotionalValue`` of ``/v5/market/instruments-info``.
    """

    symbol: str
    base: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    binance_min_notional: Decimal
    bybit_min_notional: Decimal
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


# Real minimum order values (USDT).
# Binance USD-M MIN_NOTIONAL: BTCUSDT 100 and ETHUSDT 20 since 2023-11-02 (Binance announcement "Binance
# Futures Will Update the Minimum Notional Value of BTCUSDT and ETHUSDT Perpetual Contracts", quoted by
# e.g. https://app.wrgsb.com/tr/post/status/17744539; ccxt's binance error table quotes "-4164 ... no
# smaller than 20"); every other USDT perpetual 5 (https://www.binance.com/en/support/announcement/
# 1d762daf60dd417f9d8a05d44b06a25c, "no less than the threshold of 5 USDT").
# Bybit linear minNotionalValue: 5 (bybit-exchange/docs docs/v5/market/instrument.mdx, BTCUSDT example).
# symbol, tick size, quantity step, minimum quantity, maximum quantity, initial price, Binance min notional
_DEFAULTS = (
    ("BTCUSDT", "0.1", "0.001", "0.001", "1000", "60000", "100"),
    ("ETHUSDT", "0.01", "0.001", "0.001", "10000", "3000", "20"),
    ("SOLUSDT", "0.01", "0.1", "1", "100000", "150", "5"),  # min 1 > step 0.1, as on some real markets
    ("DOGEUSDT", "0.00001", "1", "1", "50000000", "0.2", "5"),
    ("CLOUDUSDT", "0.00001", "1", "1", "50000000", "0.13012", "5"),
)
BYBIT_MIN_NOTIONAL = Decimal(5)

DEFAULT_MARKETS: tuple[MarketSpec, ...] = tuple(
    MarketSpec(
        symbol=symbol,
        base=symbol.removesuffix("USDT"),
        tick_size=Decimal(tick),
        qty_step=Decimal(step),
        min_qty=Decimal(min_qty),
        max_qty=Decimal(max_qty),
        binance_min_notional=Decimal(binance_min),
        bybit_min_notional=BYBIT_MIN_NOTIONAL,
        initial_price=Decimal(price),
    )
    for symbol, tick, step, min_qty, max_qty, price, binance_min in _DEFAULTS
)


def synthetic_markets(count: int) -> tuple[MarketSpec, ...]:
    """``count`` made-up USDT linear perpetuals, ``S0001USDT``, ``S0002USDT``... (wider numbers past 9999),
    so a test or a benchmark can list thousands of symbols and hold hundreds of positions.

    Their specs are those of a cheap real contract (DOGEUSDT-like: tick 0.0001, whole-unit quantities,
    minimum 1): a price between 1 and 2 USDT, and 5 USDT as the minimum order value on both venues (the
    value every Binance USDT perpetual but BTC and ETH has, and Bybit's, see above). Pure: the same count
    gives the same markets.
    """
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    width = max(4, len(str(count)))
    specs = []
    for number in range(1, count + 1):
        base = f"S{number:0{width}d}"
        specs.append(
            MarketSpec(
                symbol=f"{base}USDT",
                base=base,
                tick_size=Decimal("0.0001"),
                qty_step=Decimal(1),
                min_qty=Decimal(1),
                max_qty=Decimal(1_000_000),
                binance_min_notional=Decimal(5),
                bybit_min_notional=BYBIT_MIN_NOTIONAL,
                initial_price=Decimal(100 + number % 100) / 100,
            )
        )
    return tuple(specs)


def with_synthetic_markets(count: int, markets: tuple[MarketSpec, ...] = DEFAULT_MARKETS) -> tuple[MarketSpec, ...]:
    """``markets`` (the default listing) followed by ``count`` synthetic ones."""
    return markets + synthetic_markets(count)
