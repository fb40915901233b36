"""Rate-limit bookkeeping of the simulator: Binance request weight, order counts and IP bans; Bybit
per-UID endpoint limits and the per-IP limit. Pure state machines driven by the simulator's clock; the
front ends decide what to answer.

Binance (USD-M docs, General Info > LIMITS, https://developers.binance.com/docs/derivatives/
usds-margined-futures/general-info): the request weight is counted per IP per minute
(``X-MBX-USED-WEIGHT-1M``), orders per account per 10 s and per minute (``X-MBX-ORDER-COUNT-10S``/``-1M``);
over the limit -> HTTP 429; "Repeatedly violating rate limits and/or failing to back off after receiving
429s will result in an automated IP ban (HTTP status 418)"; "IP bans are tracked and scale in duration
for repeat offenders, from 2 minutes to 3 days". The windows are modelled as fixed calendar windows (the
headers reset on the minute); a request received while the client should be backing off (before the
``Retry-After`` of its 429) starts a ban, each ban twice as long as the previous one.

Bybit (bybit-exchange/docs docs/v5/rate-limit/rate-limit.mdx): "600 requests within a 5-second window
per IP" -> "403, access too frequent", "wait for at least 10 minutes"; per UID and endpoint a rolling
one-second window -> retCode 10006 with ``X-Bapi-Limit``, ``X-Bapi-Limit-Status`` (remaining) and
``X-Bapi-Limit-Reset-Timestamp``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MINUTE_MS = 60_000
TEN_SECONDS_MS = 10_000


def _window_start(now_ms: int, length_ms: int) -> int:
    return now_ms - now_ms % length_ms


def _seconds_until(now_ms: int, until_ms: int) -> int:
    """Whole seconds from now until ``until_ms``, at least 1 (the ``Retry-After`` header value)."""
    return max(1, -(-(until_ms - now_ms) // 1000))


@dataclass(slots=True)
class _BinanceIp:
    window_start: int = 0
    used: int = 0
    backoff_until: int = 0  # after a 429: the client must not call before this
    banned_until: int = 0
    bans: int = 0


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a limiter decided about one request: ``kind`` "ok", "rate_limited", "banned"."""

    kind: str
    retry_after: int = 0  # seconds
    until_ms: int = 0


OK = Verdict("ok")


class BinanceLimiter:
    """Request weight per IP and minute, back-off after a 429, escalating IP bans, order counts per account."""

    def __init__(self) -> None:
        self._ips: dict[str, _BinanceIp] = {}
        self._orders: dict[tuple[str, int, int], int] = {}  # (api_key, window length, window start) -> count

    def reset(self) -> None:
        """Forget every count, back-off and ban."""
        self._ips.clear()
        self._orders.clear()

    def admit(self, ip: str, weight: int, now_ms: int, limit: int, ban_seconds: int, max_ban_seconds: int) -> Verdict:
        """Count a request of ``weight`` from ``ip``: ok, rate limited (429) or banned (418)."""
        state = self._ips.setdefault(ip, _BinanceIp())
        if state.banned_until > now_ms:
            return Verdict("banned", _seconds_until(now_ms, state.banned_until), state.banned_until)
        if state.backoff_until > now_ms:  # did not back off after a 429
            state.bans += 1
            seconds = min(ban_seconds * 2 ** (state.bans - 1), max_ban_seconds)
            state.banned_until = now_ms + seconds * 1000
            state.backoff_until = 0
            return Verdict("banned", seconds, state.banned_until)
        self._roll(state, now_ms)
        state.used += weight
        if state.used > limit:
            state.backoff_until = state.window_start + MINUTE_MS
            return Verdict("rate_limited", _seconds_until(now_ms, state.backoff_until), state.backoff_until)
        return OK

    def force_backoff(self, ip: str, now_ms: int, seconds: float) -> Verdict:
        """Answer as if ``ip`` went over its limit: it must back off for ``seconds`` or be banned."""
        state = self._ips.setdefault(ip, _BinanceIp())
        state.backoff_until = now_ms + int(seconds * 1000)
        return Verdict("rate_limited", _seconds_until(now_ms, state.backoff_until), state.backoff_until)

    def used_weight(self, ip: str, now_ms: int) -> int:
        """The weight ``ip`` used in the current minute (the ``X-MBX-USED-WEIGHT-1M`` header)."""
        state = self._ips.setdefault(ip, _BinanceIp())
        self._roll(state, now_ms)
        return state.used

    def count_order(self, api_key: str, now_ms: int, limit_10s: int, limit_1m: int) -> tuple[str, int] | None:
        """Count a new order of ``api_key``; the exceeded (interval, limit), if the order is over a limit."""
        exceeded = None
        for length, limit, name in ((TEN_SECONDS_MS, limit_10s, "10 SECOND"), (MINUTE_MS, limit_1m, "1 MINUTE")):
            key = (api_key, length, _window_start(now_ms, length))
            self._orders[key] = self._orders.get(key, 0) + 1
            if self._orders[key] > limit and exceeded is None:
                exceeded = (name, limit)
        return exceeded

    def order_counts(self, api_key: str, now_ms: int) -> tuple[int, int]:
        """Orders of ``api_key`` in the current 10-second and minute windows."""
        return tuple(  # type: ignore[return-value]
            self._orders.get((api_key, length, _window_start(now_ms, length)), 0)
            for length in (TEN_SECONDS_MS, MINUTE_MS)
        )

    def bans(self, now_ms: int) -> list[dict[str, int | str]]:
        """The IPs banned or backing off now."""
        return [
            {"venue": "binanceusdm", "ip": ip, "banned_until": s.banned_until, "backoff_until": s.backoff_until}
            for ip, s in self._ips.items()
            if s.banned_until > now_ms or s.backoff_until > now_ms
        ]

    def _roll(self, state: _BinanceIp, now_ms: int) -> None:
        start = _window_start(now_ms, MINUTE_MS)
        if state.window_start != start:
            state.window_start, state.used = start, 0


@dataclass(slots=True)
class _Rolling:
    times: deque[int] = field(default_factory=deque)

    def prune(self, now_ms: int, length_ms: int) -> None:
        while self.times and self.times[0] <= now_ms - length_ms:
            self.times.popleft()


@dataclass(frozen=True, slots=True)
class BybitStatus:
    """The ``X-Bapi-Limit*`` header values after one request."""

    limit: int
    remaining: int
    reset_ms: int


class BybitLimiter:
    """Rolling per-IP (5 s) and per-UID-and-endpoint (1 s) windows, and IP bans."""

    IP_WINDOW_MS = 5_000
    ENDPOINT_WINDOW_MS = 1_000

    def __init__(self) -> None:
        self._ips: dict[str, _Rolling] = {}
        self._banned: dict[str, int] = {}
        self._endpoints: dict[tuple[str, str], _Rolling] = {}

    def reset(self) -> None:
        """Forget every count and ban."""
        self._ips.clear()
        self._banned.clear()
        self._endpoints.clear()

    def admit_ip(self, ip: str, now_ms: int, limit: int, ban_seconds: int) -> Verdict:
        """Count a request from ``ip``; banned (HTTP 403) while over the limit and for ``ban_seconds`` after."""
        until = self._banned.get(ip, 0)
        if until > now_ms:
            return Verdict("banned", _seconds_until(now_ms, until), until)
        window = self._ips.setdefault(ip, _Rolling())
        window.prune(now_ms, self.IP_WINDOW_MS)
        if len(window.times) >= limit:
            return self.force_ban(ip, now_ms, ban_seconds)
        window.times.append(now_ms)
        return OK

    def force_ban(self, ip: str, now_ms: int, seconds: float) -> Verdict:
        """Refuse ``ip`` for ``seconds``."""
        until = now_ms + int(seconds * 1000)
        self._banned[ip] = until
        return Verdict("banned", _seconds_until(now_ms, until), until)

    def ip_status(self, ip: str, now_ms: int, limit: int) -> BybitStatus:
        """Header values for a request without a UID (public endpoints): the IP window."""
        window = self._ips.setdefault(ip, _Rolling())
        window.prune(now_ms, self.IP_WINDOW_MS)
        remaining = max(limit - len(window.times), 0)
        reset = window.times[0] + self.IP_WINDOW_MS if remaining == 0 and window.times else now_ms
        return BybitStatus(limit, remaining, reset)

    def admit_endpoint(self, uid: str, path: str, now_ms: int, limit: int) -> tuple[bool, BybitStatus]:
        """Count a request of ``uid`` to ``path``; whether it is within the limit, and the header values."""
        window = self._endpoints.setdefault((uid, path), _Rolling())
        window.prune(now_ms, self.ENDPOINT_WINDOW_MS)
        if len(window.times) >= limit:
            return False, BybitStatus(limit, 0, window.times[0] + self.ENDPOINT_WINDOW_MS)
        window.times.append(now_ms)
        return True, BybitStatus(limit, limit - len(window.times), now_ms)

    def bans(self, now_ms: int) -> list[dict[str, int | str]]:
        """The IPs refused now."""
        return [
            {"venue": "bybit", "ip": ip, "banned_until": until} for ip, until in self._banned.items() if until > now_ms
        ]
