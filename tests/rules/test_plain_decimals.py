"""Money and quantities render as plain decimals (60000, never 6E+4) everywhere (issue 11)."""

from __future__ import annotations

from decimal import Decimal

from egis.db.store import jsonable
from egis.models import Side, fixed
from egis.output import cell, table, to_json
from egis.rules.aged import target_price
from egis.rules.exits import ClosingTrade, exit_from_trades
from egis.rules.intent import increment
from egis.rules.sizing import MarketRules, floor_to_step, quantity_for_usd

D = Decimal
EXPONENT = D("6E+4")  # what asyncpg or a division can hand us: equal to 60000, printed "6E+4"


def test_every_output_path_prints_plain_decimals() -> None:
    assert str(EXPONENT) == "6E+4"  # the trap
    assert cell(EXPONENT) == "60000"
    assert '"60000"' in to_json({"entry_price": EXPONENT}) and "E+" not in to_json([EXPONENT, D("1E-7")])
    assert jsonable({"entry_price": EXPONENT, "rows": [D("1.5E+3")]}) == {"entry_price": "60000", "rows": ["1500"]}
    assert "6E+4" not in table([{"price": EXPONENT}], ["price"])
    assert str(fixed(EXPONENT)) == "60000" and fixed(EXPONENT) == EXPONENT


def test_rules_never_produce_an_exponent() -> None:
    fill = increment(D("0.002"), D("60000"), D("0.004"), D("60000"))
    assert fill is not None and str(fill.price) == "60000"
    assert str(floor_to_step(D("60000.4"), D("1"))) == "60000"
    doge = MarketRules(symbol="DOGEUSDT", amount_step=D(1), min_quantity=D(1))
    quantity = quantity_for_usd(D("12000"), D("0.2"), doge)
    assert quantity == 60000 and str(quantity) == "60000"  # sent to the exchange as this string
    exit_ = exit_from_trades(Side.LONG, D("50000"), D("0.002"), [ClosingTrade(D("60000"), D("0.002"), None)])
    assert str(exit_.price) == "60000"
    assert "E" not in str(target_price(D("6E+4"), Side.LONG, D("0")))
