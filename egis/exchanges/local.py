"""Point a real ccxt exchange instance (binanceusdm, bybit) at a local server such as the simulator.

Measured with ccxt 4.5.90. Everything is changed on the instance only: other instances of the same class
keep the real URLs and options.
"""

from __future__ import annotations

from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from ccxt.async_support.base.exchange import Exchange

ExchangeT = TypeVar("ExchangeT", bound=Exchange)

# URL path prefix -> key of the per-market error table in binance's `exceptions`.
_BINANCE_ERROR_TABLES = (
    ("/fapi/", "linear"),
    ("/futures/", "linear"),
    ("/dapi/", "inverse"),
    ("/eapi/", "option"),
    ("/papi/", "portfolioMargin"),
    ("/sapi/", "spot"),
    ("/api/", "spot"),
)


def point_to_local(ex: ExchangeT, base_url: str) -> ExchangeT:
    """Send every REST (and ccxt.pro websocket) request of ``ex`` to ``base_url``, keeping the paths.

    Also switches off the implicit calls the local server does not serve (time sync, currencies,
    leverage brackets, Bybit account-type probes, non-linear Bybit markets) and makes binance map error
    codes of local ``/fapi/`` answers with its USD-M table. Returns ``ex``.
    """
    base = _validated_base(base_url)
    if not (ex.id.startswith("binance") or ex.id == "bybit"):
        raise ValueError(f"point_to_local supports binance* and bybit, not {ex.id!r}")
    ex.urls["api"] = _rewrite_tree(ex.urls["api"], base)
    for key in ("test", "demo", "demotrading"):  # sandbox/demo switches must not restore real hosts
        ex.urls.pop(key, None)
    ex.options["adjustForTimeDifference"] = False
    if ex.id.startswith("binance"):
        _localize_binance(ex, base)
    else:
        _localize_bybit(ex)
    return ex


def _validated_base(base_url: str) -> str:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path.strip("/"):
        raise ValueError(f"base_url must look like 'http://127.0.0.1:8901', got {base_url!r}")
    return f"{parts.scheme}://{parts.netloc}"


def _rewrite_tree(node: Any, base: str) -> Any:
    """Rewrite every URL string in a nested dict/list of ccxt URLs."""
    if isinstance(node, str):
        return _rewrite(node, base) if "://" in node else node
    if isinstance(node, dict):
        return {key: _rewrite_tree(value, base) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite_tree(value, base) for value in node]
    return node


def _rewrite(url: str, base: str) -> str:
    """Keep the path and query of ``url``; take scheme and host from ``base`` (ws/wss for websockets)."""
    target = urlsplit(base)
    parts = urlsplit(url.replace("{hostname}", "hostname.invalid"))
    scheme = target.scheme
    if parts.scheme in ("ws", "wss"):
        scheme = "ws" if target.scheme == "http" else "wss"
    return urlunsplit((scheme, target.netloc, parts.path, parts.query, parts.fragment))


def _localize_binance(ex: Exchange, base: str) -> None:
    ex.options["fetchCurrencies"] = False  # else load_markets calls /sapi capital + margin endpoints
    ex.options["leverageBrackets"] = {}  # else the first fetch_positions calls /fapi/v1/leverageBracket
    real_tables = ex.get_exceptions_by_url

    def get_exceptions_by_url(url: str | None, exact_or_broad: str) -> dict[str, Any]:
        """binance picks its per-market error table by host; for local URLs pick it by path."""
        if url is None or not url.startswith(base):
            return real_tables(url, exact_or_broad)
        path = url[len(base) :]
        table = next((name for prefix, name in _BINANCE_ERROR_TABLES if path.startswith(prefix)), None)
        if table is None:
            return {}
        return ex.safe_dict(ex.safe_dict(ex.exceptions, table, {}), exact_or_broad, {})

    ex.get_exceptions_by_url = get_exceptions_by_url  # type: ignore[method-assign]


def _localize_bybit(ex: Exchange) -> None:
    ex.options["fetchMarkets"] = {**ex.options.get("fetchMarkets", {}), "types": ["linear"]}
    ex.has["fetchCurrencies"] = False  # else load_markets calls /v5/asset/coin/query-info
    # Preset the account type so private calls skip GET /v5/user/query-api + /v5/account/info.
    ex.options["enableUnifiedAccount"] = True
    ex.options["enableUnifiedMargin"] = False
    ex.options["unifiedMarginStatus"] = 6
