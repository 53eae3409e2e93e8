"""A paper exchange speaking the Binance spot REST API and the WebSocket API's user-data stream,
for trading against with the real ccxt (and ccxt.pro).

    async with running_sim(port=0) as sim:
        client = binance_client(sim.base_url, DEMO_API_KEY, DEMO_SECRET)
        stream = binance_pro_client(sim.base_url, DEMO_API_KEY, DEMO_SECRET)
        ...  # client.create_order(...); await stream.watch_orders()
        await client.close(); await stream.close()

Operator endpoints live under `/sim/v1/` (see `exchange_kernel.sim.admin`).
"""

from exchange_kernel.sim.ccxt_binding import binance_client, binance_pro_client
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
    "binance_pro_client",
    "run",
    "running_sim",
]
