"""`make demo`: start `exchange-kernel dev` in the background, run the example strategy.

The services stay up afterwards so you can look around in the Temporal UI; `make stop` ends them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".exchange-kernel"
PID = DATA / "dev.pid"
READY = DATA / "dev.ready"
LOG = DATA / "dev.log"


def running() -> bool:
    if not PID.exists():
        return False
    try:
        os.kill(int(PID.read_text()), 0)
    except (OSError, ValueError):
        return False
    return READY.exists()


def start_dev() -> None:
    DATA.mkdir(exist_ok=True)
    READY.unlink(missing_ok=True)
    command = [sys.executable, "-m", "exchange_kernel.cli", "dev", "--ready-file", str(READY)]
    with LOG.open("ab") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    PID.write_text(str(process.pid))
    deadline = time.monotonic() + 60
    while not READY.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"exchange-kernel dev did not start; see {LOG}:\n{LOG.read_text()[-2000:]}")
        time.sleep(0.2)


def main() -> None:
    if running():
        print("exchange-kernel dev is already running; reusing it")
    else:
        print("starting exchange-kernel dev (Temporal dev server, paper exchange, worker)...")
        start_dev()
    address, ui_url, paper_url = READY.read_text().split()
    sys.path.insert(0, str(ROOT / "examples"))
    from strategy import main as strategy

    asyncio.run(strategy(address, paper_url, uuid.uuid4().hex[:6]))
    print()
    print(f"Temporal UI: {ui_url}/namespaces/default/workflows")
    print('  filter e.g.: IntentStatus="open" AND IntentSymbol="BTC/USDT"')
    print(f"paper exchange: {paper_url}   logs: {LOG}")
    print("the services keep running; `make stop` stops them")


if __name__ == "__main__":
    main()
    # The strategy's watch leaves long polls in flight on the intents still open; the Temporal
    # client's core threads may answer them while the interpreter shuts down, which aborts it
    # (temporalio/sdk-python#300). Nothing is left to clean up: leave without the shutdown.
    sys.stdout.flush()
    os._exit(0)
