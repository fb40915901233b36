"""Fault injection for the exchange simulator: scripted failures for the next requests of a route."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from http import HTTPStatus

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE"})


class FaultKind(StrEnum):
    """What happens to a request hit by a fault.

    HTTP: answer ``http_status`` with the raw text ``body``, without processing the request.
    ERROR: answer an exchange-native JSON error ``code``/``msg``, without processing the request.
    RATE_LIMIT: answer the exchange's rate-limit error, without processing the request.
    BAN: put the caller's IP in the venue's penalty box for ``seconds``, without processing the request.
      Binance: answer 429 (-1003, ``Retry-After: seconds``); a request during those seconds gets the IP
      banned with HTTP 418, like a client that does not back off. Bybit: answer HTTP 403 "access too
      frequent" and refuse the IP the same way for ``seconds`` (its IP limit).
    TIMEOUT: wait ``seconds`` without processing the request, then answer 504 (the client has given up).
    ACCEPT_THEN_TIMEOUT: process the request normally, then wait ``seconds`` before answering.
    """

    HTTP = "http"
    ERROR = "error"
    RATE_LIMIT = "rate_limit"
    BAN = "ban"
    TIMEOUT = "timeout"
    ACCEPT_THEN_TIMEOUT = "accept_then_timeout"


def parse_route(route: str) -> tuple[str, str]:
    """Split ``"POST /fapi/v1/order"`` into method and path; raises ValueError."""
    parts = route.split()
    if len(parts) != 2 or parts[0].upper() not in _METHODS or not parts[1].startswith("/"):
        raise ValueError(f"route must look like 'POST /fapi/v1/order', got {route!r}")
    return parts[0].upper(), parts[1]


@dataclass(slots=True)
class Fault:
    """A failure injected into the next ``remaining`` requests to ``method path`` (of ``api_key`` if set)."""

    method: str
    path: str
    kind: FaultKind
    remaining: int = 1
    api_key: str | None = None
    http_status: int | None = None
    body: str | None = None
    code: int | None = None
    msg: str | None = None
    seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.remaining < 1:
            raise ValueError(f"count must be at least 1, got {self.remaining}")
        if self.http_status is not None and not 200 <= self.http_status <= 599:
            raise ValueError(f"http_status must be in 200..599, got {self.http_status}")
        if self.kind is FaultKind.ERROR and self.code is None:
            raise ValueError("an 'error' fault needs a code")
        if self.seconds < 0:
            raise ValueError(f"seconds must not be negative, got {self.seconds}")

    @property
    def route(self) -> str:
        """``"METHOD /path"``, as given when the fault was added."""
        return f"{self.method} {self.path}"

    @property
    def status(self) -> int:
        """HTTP status of an ``http`` fault (500 unless given)."""
        return self.http_status or HTTPStatus.INTERNAL_SERVER_ERROR

    @property
    def text(self) -> str:
        """Raw body of an ``http`` fault (the status phrase unless given)."""
        return self.body if self.body is not None else HTTPStatus(self.status).phrase

    def matches(self, method: str, path: str, api_key: str | None) -> bool:
        """Whether a request is hit by this fault."""
        return self.method == method and self.path == path and (self.api_key is None or self.api_key == api_key)


class FaultBook:
    """The pending faults of one simulator, consumed in the order they were added."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        """Queue a fault behind those already pending."""
        self._faults.append(fault)

    def take(self, method: str, path: str, api_key: str | None) -> Fault | None:
        """The first pending fault hitting this request, with one use consumed; None if there is none."""
        for fault in self._faults:
            if fault.matches(method, path, api_key):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault
        return None

    def pending(self) -> list[Fault]:
        """The faults not used up yet."""
        return list(self._faults)

    def clear(self) -> int:
        """Drop every pending fault; returns how many there were."""
        dropped = len(self._faults)
        self._faults.clear()
        return dropped
