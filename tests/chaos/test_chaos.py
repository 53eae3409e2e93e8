"""Chaos: the real stack (dev server on SQLite, worker process, paper exchange) under worker kills,
server restarts and exchange faults, checked against the exchange's own ledger.

The bounded run is part of `make test`; the long one is `make chaos` (or `-m slow`). Both start
and stop everything they need (see tests/chaos/driver.py) and fail on any violation, printing
the summary table; the one exception is finding 2 in the bounded run, an expected failure (x)
while it is open.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.driver import ChaosConfig, Report, run_chaos

NONDETERMINISM = "[TMPRL1100] Nondeterminism error"


def only_finding_2(report: Report) -> bool:
    """Every violation is an intent stuck on a nondeterminism error: docs/reliability.md,
    finding 2, not fully fixed (issue #4; `exchange-kernel repair` is the remedy)."""
    found = {kind: entries for kind, entries in report.violations.items() if entries}
    return set(found) == {"stuck"} and all(NONDETERMINISM in e for e in found["stuck"])


def assert_clean(report: Report, known_finding_2: bool = False) -> None:
    table = report.table()
    print(table)
    if known_finding_2 and not report.ok and only_finding_2(report):
        # Shown as an expected failure (x), never as a pass: nothing else may be wrong.
        pytest.xfail(f"finding 2 (docs/reliability.md), not fully fixed:\n{table}")
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
    # Finding 2 (an intent stuck on a nondeterminism error): its query-driven cause is guarded
    # (worker/query_guard.py), but an update handled on a cold start can still write such a
    # history (temporalio/sdk-python#1591, docs/reliability.md): here it is an expected
    # failure, shown as such, while every other violation fails the suite. The full run counts
    # it as a violation.
    assert_clean(report, known_finding_2=True)


@pytest.mark.slow
async def test_chaos_long(tmp_path: Path) -> None:
    """The full run of `make chaos`: 300 intents, 3 minutes of chaos, two server restarts."""
    report = await run_chaos(
        ChaosConfig(intents=300, duration=180, seed=1, settle_timeout=150, workdir=tmp_path)
    )
    assert_clean(report)


def test_only_an_intent_stuck_on_nondeterminism_counts_as_finding_2(tmp_path: Path) -> None:
    def report(*violations: tuple[str, str]) -> Report:
        made = Report(config=ChaosConfig(), workdir=tmp_path)
        for kind, detail in violations:
            made.violate(kind, detail)
        return made

    nde = ("stuck", f"chaos-7-0023: its state cannot be read; last: {NONDETERMINISM}: ...")
    assert only_finding_2(report(nde))
    assert not only_finding_2(report())
    assert not only_finding_2(report(nde, ("duplicates", "chaos-7-0001: two live orders")))
    assert not only_finding_2(report(("stuck", "chaos-7-0002: a limit intent still open")))
