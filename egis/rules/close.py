"""The close decision (seed 003's plan), pure: given what the database holds and what the
exchange said, what does a close do?

- the exchange holds nothing: a ghost, closed without an order (closed_on_exchange);
- it holds a different quantity (by a step or more): record the exchange's quantity, then close
  that (seed 003 test 2: "uses exchange quantity for close");
- it holds ours: close ours;
- it could not be read (a transient error): close the database's quantity, counted as a
  validation failure (seed 003 test 4: "falls back to DB values").
The activity (activities/positions.py) does the I/O around it: settle a close order already
sent, read, decide here, write, send, classify the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

from egis.rules.sizing import quantities_differ


class CloseStep(StrEnum):
    GHOST = "ghost"
    CLOSE = "close"
    ADJUST_THEN_CLOSE = "adjust_then_close"
    CLOSE_UNVERIFIED = "close_unverified"


@dataclass(frozen=True)
class CloseDecision:
    step: CloseStep
    quantity: Decimal  # what the reduce-only close order carries (0 for a ghost)
    why: str

    @property
    def sends_an_order(self) -> bool:
        return self.step is not CloseStep.GHOST


def decide_close(
    open_quantity: Decimal, on_exchange: Decimal | None, *, verified: bool, step: Decimal
) -> CloseDecision:
    """`on_exchange`: the exchange's quantity on our side (None: it holds none); `verified`: the
    read succeeded (False: it failed transiently and `on_exchange` means nothing)."""
    if not verified:
        return CloseDecision(CloseStep.CLOSE_UNVERIFIED, open_quantity, "the exchange could not be read")
    if on_exchange is None or on_exchange <= 0:
        return CloseDecision(CloseStep.GHOST, Decimal(0), "no position on the exchange")
    if quantities_differ(open_quantity, on_exchange, step):
        why = f"exchange holds {on_exchange:f}, we held {open_quantity:f}"
        return CloseDecision(CloseStep.ADJUST_THEN_CLOSE, on_exchange, why)
    return CloseDecision(CloseStep.CLOSE, open_quantity, "the exchange holds our quantity")
