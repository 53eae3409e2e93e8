"""Replay a workflow history with the kernel's workflows: does the code still produce it?

    python -m tests.chaos.replay <workdir>/histories/intent-<id>.json [...]

The chaos driver writes the histories of the intents named in a violation to its workdir; a
nondeterminism error here means the intent is stuck for good (every workflow task fails).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from exchange_kernel.worker.run import WORKFLOWS


async def replay(paths: list[Path]) -> int:
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    failed = 0
    for path in paths:
        history = WorkflowHistory.from_json(path.stem, path.read_text())
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        if result.replay_failure is None:
            print(f"{path}: replays")
        else:
            failed += 1
            print(f"{path}: {result.replay_failure}")
    return failed


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    return 1 if asyncio.run(replay([Path(p) for p in sys.argv[1:]])) else 0


if __name__ == "__main__":
    sys.exit(main())
