"""The worker process: runs the intent workflows and the exchange activities."""

from exchange_kernel.worker.run import build_worker, run_worker

__all__ = ["build_worker", "run_worker"]
