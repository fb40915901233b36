"""The starter CLI for bots and operators: `python starter.py ...` is the same as `egis ...`.

    python starter.py bots create alpha --exchange paper --account paper-1 --budget 1000
    python starter.py open --bot alpha --symbol BTCUSDT --side long --usd 100 --ref sig-1
    python starter.py close pos-alpha-sig-1 --reason manual

Python bots can skip the CLI and use the typed client directly: `from egis.client import EgisClient`.
"""

from __future__ import annotations

from egis.cli import entrypoint

if __name__ == "__main__":
    entrypoint()
