"""Real-process tests for exchange_kernel.devserver (no mocks, loopback only)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeIndexedValueType
from temporalio.worker import Worker

from exchange_kernel import devserver
from exchange_kernel.devserver import (
    EXCHANGE_ORDER_IDS,
    INTENT_ACCOUNT,
    LAST_SYNC_AT,
    SEARCH_ATTRIBUTES,
    DevServer,
    DevServerError,
    dev_server_args,
    free_port,
)

EXPECTED_TYPES = {
    "IntentAccount": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "IntentSymbol": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "IntentGroup": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "IntentStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "ReconciliationStatus": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "StrategyId": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "ExchangeOrderIds": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    "LastSyncAt": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
}
SYNC_AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


# -- workflows (run in the sandbox, which also proves devserver is sandbox-importable) --


@activity.defn
async def noop_activity(value: str) -> str:
    return value


@workflow.defn(sandboxed=True)
class TrivialWorkflow:
    @workflow.run
    async def run(self, value: str) -> str:
        workflow.upsert_search_attributes(
            [
                INTENT_ACCOUNT.value_set("acct-1"),
                EXCHANGE_ORDER_IDS.value_set(["o-1", "o-2"]),
                LAST_SYNC_AT.value_set(SYNC_AT),
            ]
        )
        return await workflow.execute_activity(
            noop_activity, value, start_to_close_timeout=timedelta(seconds=10)
        )


@workflow.defn
class WaitForSignalWorkflow:
    def __init__(self) -> None:
        self._released: str | None = None

    @workflow.run
    async def run(self) -> str:
        await workflow.wait_condition(lambda: self._released is not None)
        assert self._released is not None
        return self._released

    @workflow.signal
    def release(self, value: str) -> None:
        self._released = value

    @workflow.query
    def waiting(self) -> bool:
        return self._released is None


@workflow.defn
class SleepHourWorkflow:
    @workflow.run
    async def run(self) -> float:
        start = workflow.now()
        await workflow.sleep(timedelta(hours=1))
        return (workflow.now() - start).total_seconds()


# -- helpers ----------------------------------------------------------------------------


async def registered_search_attributes(client: Client) -> dict[str, int]:
    resp = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return dict(resp.custom_attributes)


def processes_with_arg(needle: str) -> list[int]:
    """PIDs whose command line contains ``needle`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[DevServer]:
    db = tmp_path_factory.mktemp("devserver") / "temporal.db"
    async with DevServer(port=free_port(), ui_port=free_port(), db_filename=db) as srv:
        yield srv


@pytest.fixture(scope="module")
async def client(server: DevServer) -> Client:
    return await server.connect()


# -- pure -----------------------------------------------------------------------------


def test_binaries_are_installed() -> None:
    cli = devserver.temporal_cli_path()
    assert cli.is_file() and os.access(cli, os.X_OK)
    out = subprocess.run([cli, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("temporal version")
    ts = devserver.test_server_path()
    assert ts.is_file() and os.access(ts, os.X_OK)


def test_search_attribute_table() -> None:
    assert {k: int(v) for k, v in SEARCH_ATTRIBUTES.items()} == {
        k: int(v) for k, v in EXPECTED_TYPES.items()
    }
    assert [k.name for k in devserver.SEARCH_ATTRIBUTE_KEYS] == list(SEARCH_ATTRIBUTES)
    assert SEARCH_ATTRIBUTES["LastSyncAt"] is SearchAttributeIndexedValueType.DATETIME


def test_dev_server_args() -> None:
    args = dev_server_args(
        ip="127.0.0.1",
        port=7300,
        ui_port=8300,
        db_filename=Path("/tmp/x.db"),
        headless=False,
        log_level="warn",
        dynamic_config={"limit.historyCount.suggestContinueAsNew": 50, "some.key": "v"},
    )
    joined = " ".join(args)
    assert args[:2] == ["server", "start-dev"]
    assert "--ip 127.0.0.1 --port 7300 --ui-port 8300" in joined
    assert "--db-filename /tmp/x.db" in joined
    assert "--sqlite-pragma journal_mode=wal --sqlite-pragma synchronous=normal" in joined
    assert "--search-attribute ExchangeOrderIds=KeywordList" in joined
    assert "--search-attribute LastSyncAt=Datetime" in joined
    assert args.count("--search-attribute") == 8
    assert "--dynamic-config-value limit.historyCount.suggestContinueAsNew=50" in joined
    assert '--dynamic-config-value some.key="v"' in joined
    assert "--namespace default" in joined and "--log-level warn" in joined

    headless = dev_server_args(
        ip="127.0.0.1",
        port=7300,
        ui_port=8300,
        db_filename=None,
        headless=True,
        log_level="warn",
        dynamic_config={},
    )
    assert "--headless" in headless and "--ui-port" not in headless
    assert "--db-filename" not in headless and "--sqlite-pragma" not in headless


# -- DevServer --------------------------------------------------------------------------


async def test_server_properties(server: DevServer) -> None:
    assert server.target == f"127.0.0.1:{server.port}"
    assert server.ui_url == f"http://127.0.0.1:{server.ui_port}"
    assert server.process is not None and server.process.poll() is None
    assert server.db_filename is not None and server.db_filename.exists()
    # UI is on unless headless: something must be listening on the UI port.
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.ui_port)
    writer.close()
    await writer.wait_closed()


async def test_search_attributes_registered(client: Client) -> None:
    registered = await registered_search_attributes(client)
    assert {name: registered.get(name) for name in EXPECTED_TYPES} == EXPECTED_TYPES


async def test_trivial_workflow_runs(client: Client) -> None:
    task_queue = f"tq-{uuid.uuid4()}"
    async with Worker(
        client, task_queue=task_queue, workflows=[TrivialWorkflow], activities=[noop_activity]
    ):
        handle = await client.start_workflow(
            TrivialWorkflow.run, "hello", id=f"wf-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == "hello"
    desc = await handle.describe()
    assert desc.status == WorkflowExecutionStatus.COMPLETED
    typed = desc.typed_search_attributes
    assert typed.get(INTENT_ACCOUNT) == "acct-1"
    assert list(typed.get(EXCHANGE_ORDER_IDS) or []) == ["o-1", "o-2"]
    assert typed.get(LAST_SYNC_AT) == SYNC_AT


async def test_state_survives_restart(tmp_path: Path) -> None:
    db = tmp_path / "persist.db"
    log = tmp_path / "server.log"
    port = free_port()
    task_queue = f"tq-{uuid.uuid4()}"
    workflow_id = f"wf-{uuid.uuid4()}"

    async with DevServer(port=port, headless=True, db_filename=db, log_file=log) as srv:
        client = await srv.connect()
        # No sticky cache: the restarted server must not wait on the dead worker's queue.
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[WaitForSignalWorkflow],
            max_cached_workflows=0,
        ):
            handle = await client.start_workflow(
                WaitForSignalWorkflow.run, id=workflow_id, task_queue=task_queue
            )
            assert await handle.query(WaitForSignalWorkflow.waiting) is True
    assert srv.process is not None and srv.process.returncode is not None
    assert log.exists()  # an explicit log file is kept

    async with DevServer(port=port, headless=True, db_filename=db, log_file=log) as srv2:
        client2 = await srv2.connect()
        handle2 = client2.get_workflow_handle_for(WaitForSignalWorkflow.run, workflow_id)
        assert (await handle2.describe()).status == WorkflowExecutionStatus.RUNNING
        async with Worker(
            client2,
            task_queue=task_queue,
            workflows=[WaitForSignalWorkflow],
            max_cached_workflows=0,
        ):
            await handle2.signal(WaitForSignalWorkflow.release, "go")
            assert await asyncio.wait_for(handle2.result(), timeout=20) == "go"


async def test_stop_leaves_no_process() -> None:
    port = free_port()
    srv = DevServer(port=port, headless=True)
    await srv.start()
    proc = srv.process
    assert proc is not None
    temp_log = srv.log_path
    assert temp_log is not None and temp_log.exists()
    assert processes_with_arg(f"--port {port} ") == [proc.pid]

    started = time.monotonic()
    await srv.stop()
    assert time.monotonic() - started < 11
    assert proc.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    assert processes_with_arg(f"--port {port} ") == []
    assert not temp_log.exists()  # temp log is cleaned up
    assert not devserver._port_in_use("127.0.0.1", port)
    await srv.stop()  # idempotent
    srv.terminate()  # sync variant too


def test_sync_lifecycle() -> None:
    srv = DevServer(port=free_port(), headless=True)
    proc = srv.start_process()
    try:
        srv.wait_ready_sync()
        assert proc.poll() is None
    finally:
        srv.terminate()
    assert proc.returncode is not None
    srv.terminate()


async def test_early_exit_reports_log_tail() -> None:
    srv = DevServer(port=free_port(), headless=True, extra_args=["--no-such-flag"])
    with pytest.raises(DevServerError, match="no-such-flag"):
        await srv.start()
    assert srv.process is not None and srv.process.returncode not in (None, 0)


async def test_startup_timeout_is_reported() -> None:
    srv = DevServer(port=free_port(), headless=True, startup_timeout=0.001)
    try:
        with pytest.raises(DevServerError, match="not ready after"):
            await srv.start()
        # start() cleans up after itself on failure.
        assert srv.process is not None and srv.process.returncode is not None
    finally:
        await srv.stop()  # never leave a server behind, even when the test fails


async def test_stop_escalates_to_sigkill() -> None:
    srv = DevServer(port=free_port(), headless=True, stop_timeout=0)
    await srv.start()
    await srv.stop()
    assert srv.process is not None and srv.process.returncode == -signal.SIGKILL


async def test_port_in_use_is_reported() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with pytest.raises(DevServerError, match="already in use"):
            await DevServer(port=port, headless=True).start()
    finally:
        blocker.close()
        await blocker.wait_closed()


# -- SDK environments -----------------------------------------------------------------


async def test_start_local_environment_registers_attributes() -> None:
    async with await devserver.start_local_environment(
        dynamic_config={"limit.historyCount.suggestContinueAsNew": 50}
    ) as env:
        registered = await registered_search_attributes(env.client)
        assert {name: registered.get(name) for name in EXPECTED_TYPES} == EXPECTED_TYPES


async def test_time_skipping_environment_skips_an_hour() -> None:
    async with await devserver.start_time_skipping_environment() as env:
        task_queue = f"tq-{uuid.uuid4()}"
        started = time.monotonic()
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[SleepHourWorkflow, TrivialWorkflow],
            activities=[noop_activity],
        ):
            slept = await env.client.execute_workflow(
                SleepHourWorkflow.run, id=f"wf-{uuid.uuid4()}", task_queue=task_queue
            )
            # Upserting our search attributes only works if the helper registered them
            # (the Java test server rejects unknown ones and the activation would retry).
            handle = await env.client.start_workflow(
                TrivialWorkflow.run, "ts", id=f"wf-{uuid.uuid4()}", task_queue=task_queue
            )
            assert await asyncio.wait_for(handle.result(), timeout=15) == "ts"
        assert slept >= 3600
        assert time.monotonic() - started < 20
        typed = (await handle.describe()).typed_search_attributes
        assert typed.get(INTENT_ACCOUNT) == "acct-1"
