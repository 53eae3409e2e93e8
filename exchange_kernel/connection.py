"""Connecting to Temporal: temporalio.envconfig (TEMPORAL_ADDRESS, profiles) and our converter."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import TYPE_CHECKING

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

DEFAULT_ADDRESS = "localhost:7233"
TASK_QUEUE = "exchange-kernel"
# Runs each workflow worker keeps in memory (the SDK's default).
MAX_CACHED_WORKFLOWS = 1000
CONNECT_TIMEOUT = timedelta(seconds=5)


def account_task_queue(task_queue: str, account: str) -> str:
    """The task queue of `account`'s exchange activities, for workflows running on `task_queue`.

    Pure and deterministic (workflows call it): every worker serving the account polls this
    queue with the account's rate limit, which Temporal enforces across all of them."""
    return f"{task_queue}-account-{account}"


def worker_sync_queue(task_queue: str, account: str, worker_id: str) -> str:
    """The task queue of `account`'s sync rounds on one worker process (`worker_id`, unique per
    process run): only that process polls it, so a round sent there finds the snapshot the
    process kept of the previous round (worker affinity, as Temporal's samples do it with
    worker-specific task queues)."""
    return f"{account_task_queue(task_queue, account)}-worker-{worker_id}"


def sync_task_queue(task_queue: str) -> str:
    """The task queue of the account syncs of the kernel on `task_queue`: their workflow tasks
    never wait behind a backlog of intents' tasks (thousands submitted at once), which would
    let the `watch` signals pile up into one activation too large to finish in time."""
    return f"{task_queue}-sync"


class TemporalUnreachable(ConnectionError):
    """The Temporal server did not answer: the message says where we looked and what to do."""


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    *,
    profile: str | None = None,
    connect_timeout: timedelta = CONNECT_TIMEOUT,
    runtime: Runtime | None = None,
) -> Client:
    """A client configured from envconfig, overridden by explicit arguments; fails fast.

    `runtime`: e.g. `worker.metrics.metrics_runtime(port)`, whose Prometheus endpoint then serves
    this client's and its workers' metrics (default: the SDK's runtime, no metrics endpoint)."""
    try:
        config = ClientConfig.load_client_connect_config(profile=profile)
    except (OSError, ValueError, RuntimeError) as exc:
        raise TemporalUnreachable(
            f"cannot read the Temporal connection settings (profile {profile or 'default'}): {exc}"
        ) from None
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    target = config["target_host"]
    try:
        return await asyncio.wait_for(
            Client.connect(**config, data_converter=pydantic_data_converter, runtime=runtime),
            connect_timeout.total_seconds(),
        )
    except ValueError as exc:  # e.g. an invalid port in the address
        raise TemporalUnreachable(f"invalid Temporal address {target!r}: {exc}") from None
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise TemporalUnreachable(
            f"cannot reach the Temporal server at {target} ({exc}). Start one with "
            "`exchange-kernel dev`, or point TEMPORAL_ADDRESS / --address at yours."
        ) from None
