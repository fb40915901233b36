"""Egis benchmark suite: `make bench` (or `python -m bench [--quick] [--out PATH]`).

Runs on a throwaway embedded stack (PostgreSQL + Temporal dev server on free ports) against the
local exchange simulator, and prints one table in which every figure stands beside a baseline
measured in the same run. See bench/README.md.
"""
