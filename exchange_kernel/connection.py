"""Connecting to Temporal: temporalio.envconfig (TEMPORAL_ADDRESS, profiles) and our converter."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.envconfig import ClientConfig

DEFAULT_ADDRESS = "localhost:7233"
TASK_QUEUE = "exchange-kernel"
CONNECT_TIMEOUT = timedelta(seconds=5)


class TemporalUnreachable(ConnectionError):
    """The Temporal server did not answer: the message says where we looked and what to do."""


async def connect(
    address: str | None = None,
    namespace: str | None = None,
    *,
    profile: str | None = None,
    connect_timeout: timedelta = CONNECT_TIMEOUT,
) -> Client:
    """A client configured from envconfig, overridden by explicit arguments; fails fast."""
    config = ClientConfig.load_client_connect_config(profile=profile)
    config.setdefault("target_host", DEFAULT_ADDRESS)
    if address:
        config["target_host"] = address
    if namespace:
        config["namespace"] = namespace
    target = config["target_host"]
    try:
        return await asyncio.wait_for(
            Client.connect(**config, data_converter=pydantic_data_converter),
            connect_timeout.total_seconds(),
        )
    except (TimeoutError, RuntimeError, OSError) as exc:
        raise TemporalUnreachable(
            f"cannot reach the Temporal server at {target} ({exc}). Start one with "
            "`exchange-kernel dev`, or point TEMPORAL_ADDRESS / --address at yours."
        ) from None
