"""Command line: ``python -m egis.simulator --exchange binanceusdm --port 8901``."""

from __future__ import annotations

import argparse

from egis.simulator.server import API_KEYS_ENV, EXCHANGES, parse_api_keys, run_standalone


def _count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= count <= 100_000:
        raise argparse.ArgumentTypeError(f"must be in 0..100000, got {count}")
    return count


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535 (0 picks a free one), got {port}")
    return port


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m egis.simulator",
        description="Local Binance USD-M / Bybit v5 exchange simulator for ccxt (tests, demos, benchmarks).",
    )
    parser.add_argument("--exchange", required=True, choices=EXCHANGES, help="protocol the caller will use")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: a free one)")
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY:SECRET",
        help=f"accept this API key, signed with SECRET (repeatable; also ${API_KEYS_ENV}=KEY:SECRET,...)",
    )
    parser.add_argument(
        "--synthetic-markets",
        type=_count,
        default=0,
        metavar="N",
        help="also list N made-up USDT perpetuals S0001USDT... (many symbols / positions; default 0)",
    )
    args = parser.parse_args(argv)
    try:
        api_keys = parse_api_keys(",".join(args.api_key))
    except ValueError as exc:
        parser.error(str(exc))
    try:
        run_standalone(args.exchange, args.host, args.port, api_keys, args.synthetic_markets)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: error: cannot listen on {args.host}:{args.port}: {exc}\n")


if __name__ == "__main__":
    main()
