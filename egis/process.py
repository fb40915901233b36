"""How every Egis entry point (the CLI, the worker, the chaos runner, the benchmark) ends."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def hard_exit(code: int) -> None:
    """Flush and leave without interpreter finalization: the Temporal SDK's native core can
    abort in it (temporalio sdk-python#300, "PyGILState_Release"), turning a success into exit
    code 134. Queued trace spans are exported first (a no-op without tracing)."""
    with contextlib.suppress(Exception):
        from egis.temporal import flush_tracing

        flush_tracing()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
