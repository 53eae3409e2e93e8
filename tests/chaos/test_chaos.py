"""Chaos: the real stack (dev server on SQLite, worker process, paper exchange) under worker kills,
server restarts and exchange faults, checked against the exchange's own ledger.

The bounded run is part of `make test`; the long one is `make chaos` (or `-m slow`). Both start
and stop everything they need (see tests/chaos/driver.py) and fail on any violation, printing
the summary table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.driver import ChaosConfig, Report, run_chaos


def assert_clean(report: Report) -> None:
    table = report.table()
    print(table)
    assert report.ok, f"chaos found violations:\n{table}"
    counts = report.counts
    # The chaos really happened, and every intent was accounted for.
    assert counts["worker_kills"] >= 1, table
    assert counts["server_restarts"] >= 1, table
    assert counts["intents_confirmed"] == report.config.intents, table
    assert sum(report.outcomes.values()) == report.config.intents, table


async def test_chaos_bounded(tmp_path: Path) -> None:
    """40 intents, 50 s of chaos, then settle and check: about 100 s in all."""
    report = await run_chaos(
        ChaosConfig(
            intents=40,
            duration=50,
            seed=7,
            ops_per_second=5,
            worker_kill_every=(6.0, 14.0),
            fault_on=(3.0, 8.0),
            fault_off=(1.0, 3.0),
            quiet_timeout=40,
            settle_timeout=60,
            workdir=tmp_path,
        )
    )
    assert_clean(report)


@pytest.mark.slow
async def test_chaos_long(tmp_path: Path) -> None:
    """The full run of `make chaos`: 300 intents, 3 minutes of chaos, two server restarts."""
    report = await run_chaos(
        ChaosConfig(intents=300, duration=180, seed=1, settle_timeout=150, workdir=tmp_path)
    )
    assert_clean(report)
