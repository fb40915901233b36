"""Error classification: one table, one function.

(exchange, ccxt exception class, exchange code, operation) -> TRANSIENT | PERMANENT | VERIFY.

- TRANSIENT: nothing happened on the exchange; retry with backoff (Temporal does).
- PERMANENT: retrying cannot help; stop, record it, wait for an operator. Carries a reason.
- VERIFY: ambiguous; read the exchange before deciding. Either the order may have executed
  (a timeout or 5xx after sending), or the exchange's answer may be a disguise: Bybit answers
  170131 "Insufficient balance" to a reduce-only close of a position that is already gone
  (seed 003); Binance answers -2022 / -2019.

The operation is `open` or `close` for an order submission (the order's intent), `read` for
everything else. ccxt's hierarchy has traps that the table respects by matching on the exact
class names in the exception's MRO: OperationFailed is NOT a NetworkError (NetworkError is a
subclass of it), and RateLimitExceeded and DDoSProtection are siblings. First matching row wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from egis.models import ErrorClass

Operation = Literal["open", "close", "read"]
ORDERS: frozenset[Operation] = frozenset({"open", "close"})
ANY_OP: frozenset[Operation] = frozenset({"open", "close", "read"})

T, P, V = ErrorClass.TRANSIENT, ErrorClass.PERMANENT, ErrorClass.VERIFY


@dataclass(frozen=True)
class Rule:
    id: str
    exchange: str | None  # None: any exchange
    error: str  # a ccxt exception class name, matched anywhere in the raised exception's MRO
    codes: frozenset[str] | None  # exchange error codes; None: any code (or none)
    operations: frozenset[Operation]
    outcome: ErrorClass
    reason: str


def _rule(
    id: str,
    exchange: str | None,
    error: str,
    codes: Sequence[int | str] | None,
    operations: frozenset[Operation],
    outcome: ErrorClass,
    reason: str,
) -> Rule:
    return Rule(id, exchange, error, frozenset(map(str, codes)) if codes else None, operations, outcome, reason)


CLOSE: frozenset[Operation] = frozenset({"close"})
OPEN: frozenset[Operation] = frozenset({"open"})
READ: frozenset[Operation] = frozenset({"read"})

TABLE: tuple[Rule, ...] = (
    # -- misleading rejections of a reduce-only close: the position may already be gone (seed 003)
    _rule(
        "bybit-170131-close",
        "bybit",
        "InsufficientFunds",
        [170131],
        CLOSE,
        V,
        "Bybit 170131 'Insufficient balance' on a reduce-only close: usually the position is gone",
    ),
    _rule(
        "bybit-110017-close",
        "bybit",
        "InvalidOrder",
        [110017],
        CLOSE,
        V,
        "Bybit 110017 reduce-only rejected: the position may be zero",
    ),
    _rule(
        "binance-2022-close",
        "binanceusdm",
        "InvalidOrder",
        [-2022],
        CLOSE,
        V,
        "Binance -2022 'ReduceOnly Order is rejected': the position may be gone",
    ),
    _rule(
        "binance-2019-close",
        "binanceusdm",
        "InsufficientFunds",
        [-2019],
        CLOSE,
        V,
        "Binance -2019 margin insufficient on a reduce-only close: the position may be gone",
    ),
    _rule(
        "paper-reduce-only-close",
        "paper",
        "InvalidOrder",
        ["reduce_only_rejected"],
        CLOSE,
        V,
        "paper reduce-only close refused: nothing to reduce, the position may be gone",
    ),
    _rule(
        "insufficient-close",
        None,
        "InsufficientFunds",
        None,
        CLOSE,
        V,
        "insufficient funds on a reduce-only close: check the position before anything else",
    ),
    # -- a duplicate client order id means an earlier attempt reached the exchange
    _rule(
        "binance-4116-duplicate",
        "binanceusdm",
        "InvalidOrder",
        [-4116],
        ORDERS,
        V,
        "duplicate client order id: an earlier attempt was accepted; look it up",
    ),
    _rule(
        "bybit-110072-duplicate",
        "bybit",
        "InvalidOrder",
        [110072],
        ORDERS,
        V,
        "duplicate orderLinkId: an earlier attempt was accepted; look it up",
    ),
    # -- the order may or may not have executed: read before deciding
    _rule(
        "binance-unknown-status",
        "binanceusdm",
        "OperationFailed",
        [-1006, -1007],
        ORDERS,
        V,
        "Binance -1006/-1007: execution status unknown",
    ),
    _rule(
        "timeout-after-send",
        None,
        "RequestTimeout",
        None,
        ORDERS,
        V,
        "timed out after sending: the order may have executed",
    ),
    _rule(
        "unavailable-after-send",
        None,
        "ExchangeNotAvailable",
        None,
        ORDERS,
        V,
        "5xx / unavailable after sending: the order may have been accepted",
    ),
    # -- not accepted: retry later
    _rule("rate-limited", None, "RateLimitExceeded", None, ANY_OP, T, "rate limited: not accepted, retry later"),
    _rule("ddos-protection", None, "DDoSProtection", None, ANY_OP, T, "rate limited (429/418): retry later"),
    _rule("clock-skew", None, "InvalidNonce", None, ANY_OP, T, "timestamp outside the receive window: retry"),
    _rule(
        "operation-failed-after-send",
        None,
        "OperationFailed",
        None,
        ORDERS,
        V,
        "server-side failure after sending (5xx JSON): the order may have been accepted",
    ),
    _rule("network-read", None, "OperationFailed", None, READ, T, "network or server trouble while reading: retry"),
    _rule(
        "bybit-10016-after-send",
        "bybit",
        "ExchangeError",
        [10016],
        ORDERS,
        V,
        "Bybit 10016 internal error after sending: status unknown",
    ),
    _rule("bybit-10016-read", "bybit", "ExchangeError", [10016], READ, T, "Bybit 10016 internal error: retry"),
    # -- retrying cannot help
    _rule(
        "authentication",
        None,
        "AuthenticationError",
        None,
        ANY_OP,
        P,
        "credentials rejected: fix the account's API key and secret",
    ),
    _rule("insufficient-open", None, "InsufficientFunds", None, OPEN, P, "not enough margin to open"),
    _rule("bad-symbol", None, "BadSymbol", None, ANY_OP, P, "the exchange does not list this symbol"),
    _rule("invalid-order", None, "InvalidOrder", None, ANY_OP, P, "the exchange refused the order as invalid"),
    _rule(
        "exchange-error", None, "ExchangeError", None, ANY_OP, P, "unclassified exchange error: an operator must look"
    ),
)


@dataclass(frozen=True)
class Classification:
    outcome: ErrorClass
    reason: str
    rule: str


def classify(exchange: str, error_names: Sequence[str], code: str | int | None, operation: Operation) -> Classification:
    """Classify an exchange error. `error_names` is the exception's MRO class names, most specific first."""
    code_text = str(code) if code is not None else None
    names = set(error_names)
    for rule in TABLE:
        if rule.exchange is not None and rule.exchange != exchange:
            continue
        if rule.error not in names or operation not in rule.operations:
            continue
        if rule.codes is not None and code_text not in rule.codes:
            continue
        return Classification(rule.outcome, rule.reason, rule.id)
    return Classification(P, f"unclassified error {error_names[0] if error_names else '?'}", "fallback")
