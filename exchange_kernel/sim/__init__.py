"""A paper exchange speaking the Binance spot REST API, for trading against with the real ccxt.

    async with running_sim(port=0) as sim:
        client = binance_client(sim.base_url, DEMO_API_KEY, DEMO_SECRET)
        ...
        await client.close()

Operator endpoints live under `/sim/v1/` (see `exchange_kernel.sim.admin`).
"""

from exchange_kernel.sim.ccxt_binding import binance_client
from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.server import (
    DEMO_API_KEY,
    DEMO_SECRET,
    SimServer,
    run,
    running_sim,
)

__all__ = [
    "DEMO_API_KEY",
    "DEMO_SECRET",
    "Exchange",
    "SimServer",
    "binance_client",
    "run",
    "running_sim",
]
