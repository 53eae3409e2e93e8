"""What every request handler of one running sim shares."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from exchange_kernel.sim.engine import Exchange
from exchange_kernel.sim.faults import FaultInjector
from exchange_kernel.sim.request_log import RequestLog
from exchange_kernel.sim.user_stream import UserStreams


@dataclass
class SimState:
    exchange: Exchange
    faults: FaultInjector = field(default_factory=FaultInjector)
    requests: RequestLog = field(default_factory=RequestLog)
    streams: UserStreams = field(init=False)

    def __post_init__(self) -> None:
        self.streams = UserStreams(self.faults, self.exchange.now)
        self.exchange.listeners.append(self.streams.publish)

    def now(self) -> int:
        return self.exchange.now()

    def reset(self) -> None:
        # The orders and balances a stream reported are gone: end the streams, so that their
        # clients subscribe again and look afresh.
        self.streams.terminate_all()
        self.exchange.reset()
        self.faults.reset()
        self.requests.reset()


STATE = web.AppKey("sim_state", SimState)
