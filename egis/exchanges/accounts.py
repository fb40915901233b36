"""Exchange accounts: configuration and credentials, looked up by a bot's account reference.

Secrets never enter workflow inputs, Temporal history, the database or logs: workflows carry
only the reference (e.g. "binance-main"); the worker resolves it here, at activity time, from

1. `<accounts dir>/<ref>.json` (default `./.egis/accounts`; `EGIS_ACCOUNTS_DIR`), e.g.
   {"exchange": "bybit", "api_key": "...", "secret": "...", "sandbox": true}
2. environment variables, which override the file:
   EGIS_ACCOUNT_<REF>_API_KEY, EGIS_ACCOUNT_<REF>_SECRET, EGIS_ACCOUNT_<REF>_BASE_URL,
   EGIS_ACCOUNT_<REF>_SANDBOX (REF upper-cased, '-' as '_').

Keys are `SecretStr`, so they print as '**********'.
"""

from __future__ import annotations

import json
import os
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from egis.errors import CredentialsMissing, InvalidInput
from egis.models import ACCOUNT_RE, Exchange, excerpt
from egis.redact import register


class PriceSource(BaseModel):
    """Where the paper exchange reads prices: a real exchange's public tickers, or a simulator."""

    model_config = ConfigDict(extra="forbid")
    exchange: Exchange = Exchange.BINANCEUSDM
    base_url: str | None = None
    sandbox: bool = False


class AccountConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exchange: Exchange
    api_key: SecretStr | None = None
    secret: SecretStr | None = None
    base_url: str | None = None  # point the real ccxt client at a local simulator
    sandbox: bool = False  # the exchange's testnet (ccxt sandbox mode)
    timeout_ms: int = Field(default=10_000, ge=100, le=120_000)
    activities_per_second: float | None = Field(default=None, ge=0)  # override the exchange default; 0 = none
    stream: bool = True  # follow the account's private websocket stream (REST polling stays on either way)
    # paper only
    price_source: PriceSource | None = None
    starting_balance: Decimal = Decimal("10000")


def _env_name(ref: str, field: str) -> str:
    return f"EGIS_ACCOUNT_{ref.upper().replace('-', '_')}_{field}"


def load_account(ref: str, exchange: Exchange, accounts_dir: Path) -> AccountConfig:
    """Resolve an account reference; raises CredentialsMissing if a live exchange has no keys."""
    if not ACCOUNT_RE.fullmatch(ref):
        raise InvalidInput(f"invalid account reference {excerpt(ref)}")
    data: dict[str, object] = {"exchange": exchange.value}
    path = accounts_dir / f"{ref}.json"
    if path.exists():
        try:
            data |= json.loads(path.read_text())
        except ValueError as exc:
            raise CredentialsMissing(f"account file {path} is not valid JSON: {exc.msg}") from None
    for field in ("api_key", "secret", "base_url"):
        value = os.environ.get(_env_name(ref, field.upper()))
        if value:
            data[field] = value
    sandbox = os.environ.get(_env_name(ref, "SANDBOX"))
    if sandbox:
        data["sandbox"] = sandbox.lower() in {"1", "true", "yes"}
    try:
        config = AccountConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise CredentialsMissing(f"account {ref!r}: {first['loc'][0]}: {first['msg']}") from None
    register(
        config.api_key.get_secret_value() if config.api_key else None,
        config.secret.get_secret_value() if config.secret else None,
    )
    if config.exchange != exchange:
        raise CredentialsMissing(f"account {ref!r} is configured for {config.exchange}, not {exchange}")
    if exchange is not Exchange.PAPER and (config.api_key is None or config.secret is None):
        raise CredentialsMissing(
            f"no API key/secret for account {ref!r}: put them in {path} or set "
            f"{_env_name(ref, 'API_KEY')} and {_env_name(ref, 'SECRET')}"
        )
    return config


def write_account(accounts_dir: Path, ref: str, config: AccountConfig) -> Path:
    """Write an account file readable only by its owner (used by the demo and tests)."""
    accounts_dir.mkdir(parents=True, exist_ok=True)
    path = accounts_dir / f"{ref}.json"
    data = config.model_dump(mode="json", exclude_none=True)
    for field in ("api_key", "secret"):
        value = getattr(config, field)
        if value is not None:
            data[field] = value.get_secret_value()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
