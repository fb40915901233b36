"""Local exchange simulator speaking enough Binance USD-M futures and Bybit v5 REST for the real ccxt client,
and their private websocket streams for the real ccxt.pro client.

Used by tests, the demo and benchmarks, never in production. Start one with
``await start_simulator(api_keys={"my-key": "my-secret"})`` (private endpoints refuse unknown keys and
check signatures like the venues do), point ccxt at ``server.base_url`` with
``egis.exchanges.local.point_to_local`` and drive it with ``SimulatorControl``. By default it answers like
the real venues (rate limits, 7-day history windows, look-up horizons, minimum order values...); each
behaviour has a setting (``SimulatorControl.settings``) for tests that need the other case.
"""

from egis.simulator.control import SimulatorControl, SimulatorControlError
from egis.simulator.server import SimulatorServer, run_standalone, start_simulator

__all__ = [
    "SimulatorControl",
    "SimulatorControlError",
    "SimulatorServer",
    "run_standalone",
    "start_simulator",
]
