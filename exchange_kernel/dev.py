"""`exchange-kernel dev`: Temporal dev server + UI, the paper exchange and a worker, together."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

from exchange_kernel.accounts import AccountConfig
from exchange_kernel.connection import connect
from exchange_kernel.devserver import DevServer
from exchange_kernel.worker import run_worker
from exchange_kernel.worker.metrics import Telemetry

if TYPE_CHECKING:
    from exchange_kernel.sim.feed import Feed

PAPER_KEY_ENV = "EK_PAPER_API_KEY"
PAPER_SECRET_ENV = "EK_PAPER_SECRET"


def paper_account(base_url: str, name: str = "paper") -> AccountConfig:
    """An account on the paper exchange; the demo credentials go into this process's env only."""
    from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET

    os.environ.setdefault(PAPER_KEY_ENV, DEMO_API_KEY)
    os.environ.setdefault(PAPER_SECRET_ENV, DEMO_SECRET)
    return AccountConfig(
        name=name,
        exchange="binance",
        api_key_env=PAPER_KEY_ENV,
        secret_env=PAPER_SECRET_ENV,
        base_url=base_url,
    )


async def run_dev(
    port: int,
    ui_port: int,
    sim_port: int,
    data_dir: Path,
    task_queue: str,
    console: Console,
    ready_file: Path | None = None,
    telemetry: Telemetry | None = None,
    *,
    feed: Feed | None = None,
) -> None:
    """Start the three parts, print where they are, and stop them all on Ctrl-C / SIGTERM.

    `telemetry`: the worker's metrics endpoint and tracing (`Telemetry.configure(...)`).
    `feed`: moves the paper exchange's markets (`exchange_kernel.sim.feed`)."""
    from exchange_kernel.sim import SimServer

    data_dir.mkdir(parents=True, exist_ok=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    server = DevServer(
        port=port,
        ui_port=ui_port,
        db_filename=data_dir / "temporal.db",
        log_file=data_dir / "temporal.log",
    )
    sim = SimServer(host="127.0.0.1", port=sim_port, feed=feed)
    with console.status("starting the Temporal dev server"):
        await server.start()
    try:
        with console.status("starting the paper exchange"):
            await sim.start()
        try:
            telemetry = telemetry or Telemetry()
            client = telemetry.traced(await connect(server.target, runtime=telemetry.runtime))
            account = paper_account(sim.base_url)
            console.print(f"[bold green]Temporal[/]       {server.target}")
            console.print(f"[bold green]Temporal UI[/]    {server.ui_url}")
            console.print(f"[bold green]paper exchange[/] {sim.base_url}")
            if feed is not None:
                console.print(f"[bold green]market feed[/]    {feed.describe()}")
            console.print(f"[bold green]worker[/]         task queue {task_queue}, account paper")
            if telemetry.url:
                console.print(f"[bold green]metrics[/]        {telemetry.url}")
            console.print("Ctrl-C stops all three.")
            if ready_file is not None:
                ready_file.write_text(f"{server.target}\n{server.ui_url}\n{sim.base_url}\n")
            await run_worker(
                client, {"paper": account}, task_queue, stop, metrics=telemetry.metrics
            )
        finally:
            await sim.stop()
    finally:
        await server.stop()
        console.print("stopped")
