"""Every request that reached the sim's exchange API, for proving what a client did or did not send.

Admin (`/sim/...`) traffic is not recorded, so inspecting the log does not change it.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import asdict, dataclass
from typing import Any

API_KEY_PREFIX_LEN = 8


@dataclass(frozen=True)
class RequestRecord:
    seq: int
    time: int
    method: str
    path: str
    # Only a prefix: enough to tell accounts apart without copying credentials into logs.
    api_key: str | None
    # None when the connection was dropped and no answer was sent.
    status: int | None
    # Binance error code when the answer was an error body.
    code: int | None
    # Which injected fault, if any, shaped this request's fate.
    fault: str | None


class RequestLog:
    def __init__(self, capacity: int = 2000) -> None:
        self._capacity = capacity
        self.reset()

    def reset(self) -> None:
        self.counts: Counter[str] = Counter()
        self.total = 0
        self._recent: deque[RequestRecord] = deque(maxlen=self._capacity)

    def record(
        self,
        *,
        time: int,
        method: str,
        path: str,
        api_key: str | None,
        status: int | None,
        code: int | None,
        fault: str | None,
    ) -> RequestRecord:
        self.total += 1
        self.counts[f"{method} {path}"] += 1
        entry = RequestRecord(
            seq=self.total,
            time=time,
            method=method,
            path=path,
            api_key=api_key[:API_KEY_PREFIX_LEN] if api_key else None,
            status=status,
            code=code,
            fault=fault,
        )
        self._recent.append(entry)
        return entry

    @property
    def recent(self) -> list[RequestRecord]:
        return list(self._recent)

    def to_json(self, limit: int | None = None) -> dict[str, Any]:
        recent = self.recent if limit is None else self.recent[-limit:] if limit > 0 else []
        return {
            "total": self.total,
            "counts": dict(self.counts),
            "recent": [asdict(r) for r in recent],
        }
