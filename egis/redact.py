"""Keep secrets out of logs: every API key and secret the worker loads is registered here, and a
filter on the log handlers masks them in messages and tracebacks (whatever library logs them:
ccxt at DEBUG prints whole request headers)."""

from __future__ import annotations

import logging

_secrets: set[str] = set()
MASK = "***"


def register(*values: str | None) -> None:
    _secrets.update(v for v in values if v and len(v) >= 6)


def redact(text: str) -> str:
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = redact(record.exc_text)
        return True


def install() -> None:
    """Mask secrets on every handler of the root logger; keep ccxt's request dumps out of DEBUG."""
    logging.getLogger("ccxt").setLevel(max(logging.getLogger("ccxt").getEffectiveLevel(), logging.INFO))
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
