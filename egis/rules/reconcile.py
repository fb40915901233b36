"""Seed 000 §8: paper reconciliation, `positions` (internal) against `paper_positions` (the
paper exchange's raw state). DB only, no exchange calls.

Mismatch kinds, and the one documented repair for each (`--fix`). The paper exchange's rows
are its raw state, so the internal row follows them where it can; where following would mean
creating or flipping an internal position (which only an OPEN fill may do), the internal
position is closed instead and the paper row flattened. Every repair is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

ACTIONS: dict[str, str] = {
    "missing_on_paper": "close the internal position (exit unknown: NULL), releasing its budget",
    "missing_internal": "flatten the paper position: nothing internal owns it",
    "closed_on_paper": "close the internal position with the paper exit price and PnL, releasing its budget",
    "closed_internally": "close the paper position at the internal exit price",
    "side_differs": "close the internal position (exit unknown) and flatten the paper position",
    "quantity_differs": "set the internal open quantity to the paper quantity",
    "price_differs": "set the internal entry price to the paper entry price",
}
"""Kind -> repair. 'closed_on_paper' and 'closed_internally' are the two directions of a status difference."""

LIVE = ("open", "closing")


@dataclass(frozen=True)
class Pair:
    """One row of the set-based detection: an internal position and/or a paper position."""

    position_id: int | None
    paper_id: int | None
    internal_status: str | None
    internal_side: str | None
    internal_open_quantity: Decimal | None
    internal_entry: Decimal | None
    paper_status: str | None
    paper_side: str | None
    paper_quantity: Decimal | None
    paper_entry: Decimal | None


def kinds(pair: Pair) -> list[str]:
    """The mismatch kinds of one pair (what the SQL detects), most fundamental first."""
    internal_live = pair.internal_status in LIVE
    paper_open = pair.paper_status == "open"
    if pair.position_id is None:
        return ["missing_internal"] if paper_open else []
    if pair.paper_id is None:
        return ["missing_on_paper"] if internal_live else []
    if internal_live and not paper_open:
        return ["closed_on_paper"]
    if paper_open and not internal_live:
        return ["closed_internally"] if pair.internal_status in ("closed", "failed") else []
    if not (internal_live and paper_open):
        return []
    if pair.internal_side != pair.paper_side:
        return ["side_differs"]
    found = []
    if pair.internal_open_quantity != pair.paper_quantity:
        found.append("quantity_differs")
    if pair.internal_entry != pair.paper_entry:
        found.append("price_differs")
    return found


def explain(pair: Pair) -> str:
    """--debug: the reasoning for one pair."""
    internal = (
        f"position {pair.position_id} ({pair.internal_side} {pair.internal_status} open qty "
        f"{pair.internal_open_quantity} @ {pair.internal_entry})"
        if pair.position_id is not None
        else "no internal position"
    )
    paper = (
        f"paper #{pair.paper_id} ({pair.paper_side} {pair.paper_status} qty {pair.paper_quantity} @ {pair.paper_entry})"
        if pair.paper_id is not None
        else "no paper position"
    )
    found = kinds(pair)
    verdict = "; ".join(f"{k} -> {ACTIONS[k]}" for k in found) or "consistent"
    return f"{internal} vs {paper}: {verdict}"
