"""Typed errors.

Every refusal the service makes is one of these classes, so callers (the CLI, bots using
`egis.client`, workflows) can tell a bad request from a broken dependency. Each error
carries a stable `code` (its class name) that survives the trip through Temporal as an
`ApplicationError.type`, and `details` with the figures that explain it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, ClassVar


class EgisError(Exception):
    """Base class of every deliberate refusal. `retryable` tells Temporal what to do with it."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    @property
    def code(self) -> str:
        return type(self).__name__

    def __str__(self) -> str:
        return self.message


class InvalidInput(EgisError):
    """Malformed or out-of-range input (symbol, side, amount, identifier...). Nothing was written."""


class UnknownBot(InvalidInput):
    """The bot named in a request does not exist."""


class UnknownSymbol(InvalidInput):
    """The exchange does not list this market."""


class QuantityRejected(InvalidInput):
    """A quantity is below the market minimum, off its step, or too small in notional."""


class DuplicateBot(EgisError):
    """A bot with that name already exists."""


class BudgetExceeded(EgisError):
    """A reservation would take the bot's available budget below zero."""

    def __init__(self, bot: str, requested: Decimal, available: Decimal) -> None:
        super().__init__(
            f"not enough budget for bot {bot!r}: available ${available:f}, requested ${requested:f}",
            bot=bot,
            requested=format(requested, "f"),
            available=format(available, "f"),
        )


class PositionAlreadyOpen(EgisError):
    """The bot already has a non-final position in this symbol and side (or the account nets it)."""


class UntrackedExchangePosition(EgisError):
    """The exchange account holds a position in the symbol that no live Egis position accounts
    for: an open would net against it (one-way mode), so it is refused before anything is written."""


class HedgeModeAccount(EgisError):
    """The exchange account runs in hedge mode; Egis keeps one net position per account and
    symbol (one-way mode) and refuses to open there until the account is switched."""


class IntentViolation(EgisError):
    """A fill would break the intent rule: a close order can never create, flip or increase a position."""


class PositionNotFound(EgisError):
    """No position with that id / workflow exists."""


class InvalidTransition(EgisError):
    """The position is not in a state that allows this operation."""


class CredentialsMissing(EgisError):
    """No credentials (or account configuration) were found for an exchange account reference."""


class ExchangeRejected(EgisError):
    """The exchange refused an order for a reason that retrying cannot fix (a PERMANENT error)."""


class StackError(EgisError):
    """The embedded stack cannot start: a port is taken, the data dir is locked, a binary is missing."""


ALL_ERRORS: dict[str, type[EgisError]] = {
    cls.__name__: cls
    for cls in (
        EgisError,
        InvalidInput,
        UnknownBot,
        UnknownSymbol,
        QuantityRejected,
        DuplicateBot,
        BudgetExceeded,
        PositionAlreadyOpen,
        UntrackedExchangePosition,
        HedgeModeAccount,
        IntentViolation,
        PositionNotFound,
        InvalidTransition,
        CredentialsMissing,
        ExchangeRejected,
        StackError,
    )
}
"""Error classes by code, used to turn an `ApplicationError.type` back into the typed error."""


def rebuild(code: str | None, message: str) -> EgisError:
    """Turn an ApplicationError type + message (after a trip through Temporal) into the typed error."""
    cls = ALL_ERRORS.get(code or "", EgisError)
    error = cls.__new__(cls)
    EgisError.__init__(error, message)
    return error
