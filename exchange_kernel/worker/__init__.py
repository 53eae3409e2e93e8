"""The worker process: runs the intent workflows and the exchange activities."""

from __future__ import annotations

from typing import Any

__all__ = ["build_worker", "run_worker"]


def __getattr__(name: str) -> Any:
    # Lazy: workflows import exchange_kernel.worker.metrics, and run.py imports the workflows.
    if name in __all__:
        from exchange_kernel.worker import run

        return getattr(run, name)
    raise AttributeError(name)
