"""Metrics: a real worker with a Prometheus endpoint, the paper exchange, and the metrics command.

The worker here runs on its own paper exchange, account name and task queue, so its account
sync and its counters see only this module's intents.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from temporalio import workflow
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from typer.testing import CliRunner

from exchange_kernel.accounts import AccountConfig
from exchange_kernel.cli import app
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import connect
from exchange_kernel.devserver import free_port
from exchange_kernel.models import (
    IntentStart,
    IntentState,
    IntentStatus,
    OrderIntent,
    OrderSpec,
    ReconciliationStatus,
)
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.worker import run_worker
from exchange_kernel.worker.metrics import (
    IntentGauges,
    IntentMetrics,
    Row,
    bind_address,
    metrics_runtime,
    parse,
    quantile,
    read,
    summarize,
    tracing_interceptor,
    with_tracing,
)
from tests.conftest import Paper

ACCOUNT = "metrics"
TASK_QUEUE = "exchange-kernel-metrics-tests"
KEY_ENV = "EK_TEST_METRICS_KEY"
SECRET_ENV = "EK_TEST_METRICS_SECRET"

runner = CliRunner()


@dataclass
class MetricsWorker:
    url: str
    client: Client
    intents: IntentClient
    paper: Paper

    async def rows(self) -> list[Row]:
        return await read(self.url)

    async def gauges_now(self) -> None:
        """Count in visibility now instead of at the worker's next interval."""
        await IntentGauges(self.client, TASK_QUEUE, [ACCOUNT]).refresh()


def value(rows: list[Row], metric: str, **labels: str) -> float:
    """Sum of the summary rows of `metric` whose labels include `labels`."""
    return sum(
        row.value if row.value is not None else (row.count or 0.0)
        for row in rows
        if row.metric == metric and labels.items() <= row.labels.items()
    )


def intent(symbol: str = "BTC/USDT", price: str | None = "29000", **order: Any) -> OrderIntent:
    return OrderIntent(
        intent_id=f"m-{uuid.uuid4().hex[:10]}",
        account=ACCOUNT,
        order=OrderSpec(symbol=symbol, side="buy", amount="0.01", price=price, **order),
    )


def resting(state: IntentState) -> bool:
    return state.status is IntentStatus.OPEN and state.reconciliation_status.value == "in_sync"


@pytest.fixture(scope="module")
async def metrics_worker(temporal_env: WorkflowEnvironment) -> AsyncIterator[MetricsWorker]:
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    port = free_port()
    runtime = metrics_runtime(port)
    target = temporal_env.client.service_client.config.target_host
    client = await connect(target, runtime=runtime)
    async with running_sim(port=0) as sim, aiohttp.ClientSession() as session:
        paper = Paper(base_url=sim.base_url, session=session, server=sim)
        account = AccountConfig(
            name=ACCOUNT,
            exchange="binance",
            api_key_env=KEY_ENV,
            secret_env=SECRET_ENV,
            base_url=sim.base_url,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_worker(client, {ACCOUNT: account}, TASK_QUEUE, stop, metrics=True)
        )
        intents = IntentClient(client, TASK_QUEUE)
        try:
            yield MetricsWorker(f"http://127.0.0.1:{port}/metrics", client, intents, paper)
        finally:
            # Leave nothing running on this task queue once its worker is gone.
            for row in await intents.list(account=ACCOUNT, status="open"):
                await intents.cancel(row.intent_id, "end of the metrics tests")
                await asyncio.wait_for(intents.result(row.intent_id), 30)
            stop.set()
            await task


@pytest.fixture(scope="module")
async def traffic(metrics_worker: MetricsWorker) -> MetricsWorker:
    """A few intents through the worker: two resting, one filled, one retried, one rejected."""
    kernel, paper = metrics_worker.intents, metrics_worker.paper
    await paper.move_price("BTC/USDT", "30000")
    await paper.move_price("ETH/USDT", "2000")
    resting_ids = []
    for _ in range(2):
        rests = intent()
        await kernel.submit(rests)
        resting_ids.append(rests.intent_id)
    filled = intent(symbol="ETH/USDT", price=None, type="market")
    await kernel.submit(filled)
    rejected = intent(symbol="NOPE/USDT")
    await kernel.submit(rejected)
    assert (await kernel.result(filled.intent_id)).status is IntentStatus.FILLED
    assert (await kernel.result(rejected.intent_id)).status is IntentStatus.REJECTED
    for intent_id in resting_ids:
        await kernel.wait_for(intent_id, resting)

    # One placement meets a 503 first: Temporal retries it and the retry places the order.
    await paper.faults(error_503=1.0, max_faults=1, endpoints=["POST /api/v3/order"])
    try:
        retried = intent(price="28000")
        await kernel.submit(retried)
        await kernel.wait_for(retried.intent_id, resting, within=timedelta(seconds=60))
    finally:
        await paper.faults()
    return metrics_worker


# --- reading a scrape ----------------------------------------------------------------------------

EXPOSITION = """\
# HELP exchange_kernel_reconcile_lag_seconds lag
# TYPE exchange_kernel_reconcile_lag_seconds histogram
exchange_kernel_reconcile_lag_seconds_bucket{account="a",change="submit",task_queue="q",le="0.1"} 1
exchange_kernel_reconcile_lag_seconds_bucket{account="a",change="submit",task_queue="q",le="1"} 3
exchange_kernel_reconcile_lag_seconds_bucket{account="a",change="submit",task_queue="q",le="+Inf"} 4
exchange_kernel_reconcile_lag_seconds_sum{account="a",change="submit",task_queue="q"} 6.5
exchange_kernel_reconcile_lag_seconds_count{account="a",change="submit",task_queue="q"} 4
# HELP exchange_kernel_exchange_errors_total errors
# TYPE exchange_kernel_exchange_errors_total counter
exchange_kernel_exchange_errors_total{account="a",error="Bad \\"quoted\\"",activity_type="x"} 2
exchange_kernel_exchange_errors_total{account="a",error="Bad \\"quoted\\"",activity_type="y"} 1
# TYPE temporal_request_total counter
temporal_request_total{operation="StartWorkflowExecution"} 7
"""


def test_parse_folds_histogram_parts_into_their_family() -> None:
    families = parse(EXPOSITION)
    lag = families["exchange_kernel_reconcile_lag_seconds"]
    assert lag.kind == "histogram"
    assert len(lag.samples) == 5
    assert "exchange_kernel_reconcile_lag_seconds_bucket" not in families


def test_summary_sums_series_over_context_labels_and_unescapes_values() -> None:
    rows = summarize(parse(EXPOSITION))
    errors = [r for r in rows if r.metric == "exchange_kernel_exchange_errors_total"]
    assert [(r.labels["error"], r.labels["activity_type"], r.value) for r in errors] == [
        ('Bad "quoted"', "x", 2.0),
        ('Bad "quoted"', "y", 1.0),
    ]
    (lag,) = [r for r in rows if r.metric == "exchange_kernel_reconcile_lag_seconds"]
    assert lag.labels == {"account": "a", "change": "submit"}  # task_queue is context
    assert lag.count == 4 and lag.mean == pytest.approx(1.625)
    assert all(r.metric.startswith("exchange_kernel_") for r in rows)


def test_quantile_interpolates_within_the_bucket_like_histogram_quantile() -> None:
    buckets = [(0.1, 1.0), (1.0, 3.0), (float("inf"), 4.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.1 + 0.9 * (2 - 1) / 2)
    assert quantile(0.95, buckets) == 1.0  # in +Inf: the highest finite bound is all we know
    assert quantile(0.5, []) is None


def test_metrics_port_is_loopback_unless_a_host_is_given() -> None:
    assert bind_address(9464) == "127.0.0.1:9464"
    assert bind_address("0.0.0.0:9464") == "0.0.0.0:9464"
    with pytest.raises(ValueError, match="PORT or HOST:PORT"):
        bind_address("ninety")


def test_a_taken_metrics_port_is_refused_before_anything_starts() -> None:
    with socket.socket() as metrics_taken, socket.socket() as temporal_taken:
        for sock in (metrics_taken, temporal_taken):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        # The Temporal port is taken too: were the metrics port not checked first, the dev
        # server would fail at once instead of starting.
        metrics_port = metrics_taken.getsockname()[1]
        temporal_port = temporal_taken.getsockname()[1]
        result = runner.invoke(
            app, ["dev", "--metrics-port", str(metrics_port), "--port", str(temporal_port)]
        )
    assert result.exit_code == 2, result.output
    assert f"cannot serve metrics on 127.0.0.1:{metrics_port}" in result.output


def test_otel_without_the_extra_is_refused_with_the_install_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were missing
    with socket.socket() as temporal_taken:
        temporal_taken.bind(("127.0.0.1", 0))
        temporal_taken.listen()
        port = temporal_taken.getsockname()[1]
        result = runner.invoke(app, ["dev", "--otel", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "otel extra" in result.output
    assert "exchange-kernel[otel]" in result.output


# --- a real worker -------------------------------------------------------------------------------


async def test_worker_serves_exchange_requests_by_endpoint(traffic: MetricsWorker) -> None:
    rows = await traffic.rows()
    requests = "exchange_kernel_exchange_requests_total"
    for endpoint in ("load_markets", "create_order", "fetch_order"):
        assert value(rows, requests, account=ACCOUNT, exchange="binance", endpoint=endpoint) >= 1
    # Two resting + one filled + one retried placement, each created once or more.
    assert value(rows, requests, account=ACCOUNT, endpoint="create_order") >= 4


async def test_worker_counts_errors_by_class_and_retries(traffic: MetricsWorker) -> None:
    rows = await traffic.rows()
    errors = "exchange_kernel_exchange_errors_total"
    assert value(rows, errors, account=ACCOUNT, error="BadSymbol", retryable="false") == 1
    assert value(rows, errors, account=ACCOUNT, retryable="true") >= 1
    retries = "exchange_kernel_exchange_retries_total"
    assert value(rows, retries, account=ACCOUNT, activity_type="place_order") >= 1


async def test_worker_gauges_count_intents_by_status_in_visibility(traffic: MetricsWorker) -> None:
    async with asyncio.timeout(20):
        while True:
            await traffic.gauges_now()
            rows = await traffic.rows()
            if value(rows, "exchange_kernel_intents", account=ACCOUNT, status="open") >= 3:
                break
            await asyncio.sleep(0.2)
    # Terminal intents are not running: they are counted by intents_finished_total instead.
    assert value(rows, "exchange_kernel_intents", account=ACCOUNT, status="pending") == 0
    pending = "exchange_kernel_reconciliations_pending"
    assert {r.labels["reconciliation_status"] for r in rows if r.metric == pending} == {
        "reconciling",
        "unknown",
        "stale",
    }


async def test_worker_serves_the_sdk_metrics_on_the_same_endpoint(traffic: MetricsWorker) -> None:
    rows = await read(traffic.url, everything=True)
    names = {row.metric for row in rows}
    assert "temporal_workflow_completed_total" in names
    assert "temporal_activity_execution_latency" in names


async def test_intent_workflows_report_lag_and_outcomes(traffic: MetricsWorker) -> None:
    rows = await traffic.rows()
    finished = "exchange_kernel_intents_finished_total"
    assert value(rows, finished, account=ACCOUNT, status="filled") >= 1
    assert value(rows, finished, account=ACCOUNT, status="rejected") >= 1
    lag = "exchange_kernel_reconcile_lag_seconds"
    assert value(rows, lag, account=ACCOUNT, change="submit") >= 4


# --- the command ---------------------------------------------------------------------------------


async def test_metrics_command_prints_a_table(traffic: MetricsWorker) -> None:
    result = await asyncio.to_thread(runner.invoke, app, ["metrics", "--url", traffic.url])
    assert result.exit_code == 0, result.output
    assert "exchange_kernel_exchange_requests_total" in result.output
    assert "create_order" in result.output
    assert "exchange_kernel_exchange_errors_total" in result.output
    assert "BadSymbol" in result.output


async def test_metrics_command_json_is_the_summary(traffic: MetricsWorker) -> None:
    result = await asyncio.to_thread(
        runner.invoke, app, ["metrics", "--url", traffic.url, "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["url"] == traffic.url
    series = data["series"]
    assert {s["metric"] for s in series} >= {
        "exchange_kernel_exchange_requests_total",
        "exchange_kernel_exchange_errors_total",
        "exchange_kernel_exchange_retries_total",
        "exchange_kernel_intents",
        "exchange_kernel_reconciliations_pending",
    }
    assert all(s["value"] >= 0 for s in series if "value" in s)


def test_metrics_command_without_a_worker_says_how_to_start_one() -> None:
    url = f"http://127.0.0.1:{free_port()}/metrics"
    result = runner.invoke(app, ["metrics", "--url", url])
    assert result.exit_code == 1
    assert f"cannot read metrics at {url}" in result.output
    assert "--metrics-port" in result.output


# --- the workflow-side helper --------------------------------------------------------------------


@workflow.defn(sandboxed=False)
class LagProbe:
    """Feeds IntentMetrics the states an intent goes through: submit, in sync, modify, filled."""

    @workflow.run
    async def run(self) -> None:
        order = OrderIntent(
            intent_id="probe",
            account="probe",
            order=OrderSpec(symbol="BTC/USDT", side="buy", amount="1", price="100"),
        )
        start = IntentStart(intent=order)
        metrics = IntentMetrics(start, workflow.info().workflow_start_time)
        state = IntentState(intent=order, desired=order.order)

        def observe() -> None:
            metrics.observe(workflow.metric_meter(), state, workflow.now())

        observe()
        await workflow.sleep(0.3)
        in_sync = {
            "status": IntentStatus.OPEN,
            "reconciliation_status": ReconciliationStatus.IN_SYNC,
        }
        state = state.model_copy(update=in_sync)
        observe()
        observe()  # nothing changed: nothing recorded
        await workflow.sleep(0.1)
        state = state.model_copy(
            update={"revision": 1, "reconciliation_status": ReconciliationStatus.RECONCILING}
        )
        observe()
        await workflow.sleep(0.1)
        state = state.model_copy(update={"reconciliation_status": ReconciliationStatus.IN_SYNC})
        observe()
        state = state.model_copy(update={"status": IntentStatus.FILLED})
        observe()
        observe()


async def test_intent_metrics_records_each_lag_and_outcome_once_even_when_replayed(
    temporal_env: WorkflowEnvironment,
) -> None:
    port = free_port()
    client = await connect(
        temporal_env.client.service_client.config.target_host, runtime=metrics_runtime(port)
    )
    # No cache: every workflow task replays the history from the start, and the replay-safe
    # meter must drop what the replay records again.
    async with Worker(
        client,
        task_queue="lag-probe",
        workflows=[LagProbe],
        max_cached_workflows=0,
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        await client.execute_workflow(
            LagProbe.run, id=f"probe-{uuid.uuid4()}", task_queue="lag-probe"
        )
    rows = await read(f"http://127.0.0.1:{port}/metrics")
    lag = "exchange_kernel_reconcile_lag_seconds"
    (submit,) = [r for r in rows if r.metric == lag and r.labels["change"] == "submit"]
    (modify,) = [r for r in rows if r.metric == lag and r.labels["change"] == "modify"]
    assert submit.count == 1 and submit.mean is not None and submit.mean >= 0.3
    assert modify.count == 1 and modify.mean is not None and 0.1 <= modify.mean < 5
    finished = "exchange_kernel_intents_finished_total"
    assert value(rows, finished, account="probe", status="filled") == 1


# --- OpenTelemetry (the optional `otel` extra) ---------------------------------------------------


@workflow.defn(sandboxed=False)
class TracedProbe:
    @workflow.run
    async def run(self) -> str:
        return "traced"


async def test_otel_extra_traces_workflows_through_the_interceptor(
    temporal_env: WorkflowEnvironment,
) -> None:
    pytest.importorskip(
        "opentelemetry.sdk", reason="the optional otel extra is not installed (pip install .[otel])"
    )
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from temporalio.contrib.opentelemetry import TracingInterceptor

    # An application's own provider is kept; tracing_interceptor() only installs one if none is.
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the process's provider can be set only once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    interceptor = tracing_interceptor()
    assert isinstance(interceptor, TracingInterceptor)
    assert trace.get_tracer_provider() is provider

    traced = with_tracing(temporal_env.client, interceptor)
    assert traced.service_client is temporal_env.client.service_client
    async with Worker(traced, task_queue="traced-probe", workflows=[TracedProbe]):
        result = await traced.execute_workflow(
            TracedProbe.run, id=f"traced-{uuid.uuid4()}", task_queue="traced-probe"
        )
    assert result == "traced"
    names = {span.name for span in exporter.get_finished_spans()}
    assert {"StartWorkflow:TracedProbe", "RunWorkflow:TracedProbe"} <= names
