"""What every request handler of one running sim shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.faults import FaultInjector
from exchange_kernel.sim.request_log import RequestLog


@dataclass
class SimState:
    exchange: Exchange
    faults: FaultInjector = field(default_factory=FaultInjector)
    requests: RequestLog = field(default_factory=RequestLog)

    def now(self) -> int:
        return self.exchange.now()

    def reset(self) -> None:
        self.exchange.reset()
        self.faults.reset()
        self.requests.reset()


STATE = web.AppKey("sim_state", SimState)
