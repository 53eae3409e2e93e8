"""The worker's Prometheus metrics and optional OpenTelemetry tracing.

The SDK's own exporter serves everything: a `Runtime` with a Prometheus endpoint carries the
SDK's `temporal_*` series and exchange-kernel's `exchange_kernel_*` series, recorded through the
SDK's meters, so there is one scrape target and no second metrics library. Four places record:

- exchange activities (`ExchangeCallMetrics`, in `ExchangeActivities._call`): requests by ccxt
  method, errors by ccxt class, retried attempts;
- the intent workflow (`IntentMetrics`, on `workflow.metric_meter()`, which records nothing
  while replaying): reconciliation lag and finished intents by outcome;
- the worker (`IntentGauges`): intents by status and pending reconciliations, counted in
  Temporal visibility, so a gauge is one number per status and account, not one per intent.
- the query guard (`worker/query_guard.py`): runs evicted from the worker's cache after a
  legacy query.

`read()` turns a scrape back into the summary that `exchange-kernel metrics` prints;
`Telemetry` is what `worker` and `dev` set up from `--metrics-port` and `--otel` (tracing with
the optional `otel` extra). docs/metrics.md lists every series.

This module is imported by workflow code (passed through the sandbox): it does no I/O at import
time and imports the client, OpenTelemetry and HTTP pieces inside the functions that use them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from ccxt.base.types import Entry
from temporalio import activity
from temporalio.common import MetricMeter

from exchange_kernel.models import IntentStart, IntentState, IntentStatus, ReconciliationStatus

if TYPE_CHECKING:
    from temporalio.client import Client
    from temporalio.exceptions import ApplicationError
    from temporalio.runtime import Runtime

    from exchange_kernel.accounts import ExchangePool

log = logging.getLogger("exchange_kernel.metrics")

PREFIX = "exchange_kernel_"
DEFAULT_METRICS_PORT = 9464
DEFAULT_METRICS_URL = f"http://127.0.0.1:{DEFAULT_METRICS_PORT}/metrics"
OTEL_ENV = "EXCHANGE_KERNEL_OTEL"


@dataclass(frozen=True)
class Metric:
    name: str  # as scraped
    kind: str  # counter | gauge | histogram, as Prometheus types them
    help: str
    labels: tuple[str, ...]

    @property
    def instrument(self) -> str:
        """The name given to the SDK meter: the exporter adds `_total` to counters itself."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name


REQUESTS = Metric(
    "exchange_kernel_exchange_requests_total",
    "counter",
    "ccxt unified-API calls made by exchange activities, by method (the endpoint)",
    ("exchange", "account", "endpoint"),
)
ERRORS = Metric(
    "exchange_kernel_exchange_errors_total",
    "counter",
    "failed exchange activity attempts, by ccxt error class and whether Temporal retries them",
    ("exchange", "account", "error", "retryable"),
)
RETRIES = Metric(
    "exchange_kernel_exchange_retries_total",
    "counter",
    "exchange activity attempts after the first (Temporal retries after an error)",
    ("exchange", "account", "activity_type"),
)
RECONCILE_LAG = Metric(
    "exchange_kernel_reconcile_lag_seconds",
    "histogram",
    "time from a desired change (submit, modify, cancel) until the exchange matches the intent",
    ("account", "change"),
)
FINISHED = Metric(
    "exchange_kernel_intents_finished_total",
    "counter",
    "intents that reached a terminal status, by status",
    ("account", "status"),
)
INTENTS = Metric(
    "exchange_kernel_intents",
    "gauge",
    "running intents by status (pending, open, partially_filled), from Temporal visibility",
    ("account", "status"),
)
PENDING = Metric(
    "exchange_kernel_reconciliations_pending",
    "gauge",
    "running intents whose exchange does not match yet (reconciling, unknown), from visibility",
    ("account", "reconciliation_status"),
)
EVICTIONS = Metric(
    "exchange_kernel_query_guard_evictions_total",
    "counter",
    "runs evicted after a legacy query that loaded them advanced (worker/query_guard.py)",
    ("task_queue",),
)
METRICS = (REQUESTS, ERRORS, RETRIES, RECONCILE_LAG, FINISHED, INTENTS, PENDING, EVICTIONS)

# Seconds: an order resting within a Temporal round trip lands in the first buckets, an intent
# waiting out rate limits or unanswered calls in the last ones.
LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)
RUNNING_STATUSES = (IntentStatus.PENDING, IntentStatus.OPEN, IntentStatus.PARTIALLY_FILLED)
UNSETTLED = (
    ReconciliationStatus.RECONCILING,
    ReconciliationStatus.UNKNOWN,
    ReconciliationStatus.STALE,
)


# --- the runtime that serves /metrics -------------------------------------------------------------


def bind_address(port_or_address: str | int) -> str:
    """`9464` -> `127.0.0.1:9464` (loopback unless asked); `0.0.0.0:9464` is kept as given."""
    text = str(port_or_address).strip()
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"metrics port {text!r}: expected PORT or HOST:PORT")
    return f"{host or '127.0.0.1'}:{port}"


def metrics_runtime(port_or_address: str | int) -> Runtime:
    """A Temporal runtime whose Prometheus endpoint serves the SDK's and our metrics.

    Connect the worker's client with it (`connect(..., runtime=...)`): the SDK records its own
    metrics and hands its meters to activities and workflows from the client's runtime.
    """
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    address = bind_address(port_or_address)
    config = PrometheusConfig(
        bind_address=address,
        counters_total_suffix=True,
        durations_as_seconds=True,
        histogram_bucket_overrides={RECONCILE_LAG.name: LAG_BUCKETS},
    )
    try:
        return Runtime(telemetry=TelemetryConfig(metrics=config))
    except Exception as exc:  # the core reports a taken port as a plain exception
        raise OSError(f"cannot serve metrics on {address}: {exc}") from None


def metrics_url(port_or_address: str | int) -> str:
    host, _, port = bind_address(port_or_address).rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}/metrics"


# --- activities -----------------------------------------------------------------------------------


class ExchangeCallMetrics:
    """Counts one exchange activity attempt: its ccxt calls, its error, whether it is a retry.

    Outside an activity (a unit test calling the method directly) it records nothing.
    """

    def __init__(self, account: str, pool: ExchangePool) -> None:
        config = pool.accounts.get(account)
        self.labels = {"exchange": config.exchange if config else "unknown", "account": account}
        self.meter: MetricMeter | None = None
        if activity.in_activity():
            self.meter = activity.metric_meter()
            if activity.info().attempt > 1:
                retries = self.meter.create_counter(RETRIES.instrument, RETRIES.help)
                retries.add(1, self.labels)

    def counting(self, client: Any) -> Any:
        """The ccxt client, counting each of its coroutine methods that the activity calls."""
        if self.meter is None:
            return client
        requests = self.meter.create_counter(REQUESTS.instrument, REQUESTS.help)
        return _CountingClient(client, lambda endpoint: requests.add(1, self._with(endpoint)))

    def failed(self, error: ApplicationError) -> None:
        if self.meter is None:
            return
        errors = self.meter.create_counter(ERRORS.instrument, ERRORS.help)
        retryable = "false" if error.non_retryable else "true"
        errors.add(1, {**self.labels, "error": error.type or "Exception", "retryable": retryable})

    def _with(self, endpoint: str) -> dict[str, str]:
        return {**self.labels, "endpoint": endpoint}


class _CountingClient:
    """Forwards everything to the ccxt client; coroutine methods are counted by name first.

    Only the activity's own calls are counted (ccxt calls itself on the real client), which is
    what "requests by endpoint" means here: `load_markets` answers from ccxt's cache after the
    first call and is counted all the same.
    """

    def __init__(self, client: Any, count: Callable[[str], None]) -> None:
        self._client = client
        self._count = count

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._client, name)
        if name.startswith("_") or not (
            inspect.iscoroutinefunction(value) or _implicit_endpoint(self._client, name)
        ):
            return value

        @functools.wraps(value)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self._count(name)
            return await value(*args, **kwargs)

        return counted


# --- the intent workflow --------------------------------------------------------------------------


class IntentMetrics:
    """Reconciliation lag and outcome of one intent, recorded from its workflow.

    Create it in the workflow's `__init__`, call `observe` whenever the state is published. Its
    own fields never feed a workflow decision, and the workflow meter records nothing during
    replay, so it is deterministic and counts each lag and outcome once. A run continued as new
    with an unsettled state measures no lag for that change (its start is in the previous run).
    """

    def __init__(self, start: IntentStart, workflow_start_time: datetime) -> None:
        self.account = start.intent.account
        fresh = start.state is None
        self._since: datetime | None = workflow_start_time if fresh else None
        self._change = "submit"
        self._revision: int | None = None
        self._cancelling = False
        self._finished = False
        self._lag: Any = None
        self._outcomes: Any = None

    def observe(self, meter: MetricMeter, state: IntentState, now: datetime) -> None:
        if self._revision is None:
            self._revision = state.revision
            self._cancelling = state.cancel_reason is not None
        if state.revision != self._revision:
            self._revision = state.revision
            self._changed("modify", now)
        if state.cancel_reason is not None and not self._cancelling:
            self._cancelling = True
            self._changed("cancel", now)
        settled = state.status.is_terminal or (
            state.reconciliation_status is ReconciliationStatus.IN_SYNC
        )
        if settled and self._since is not None:
            if self._lag is None:
                self._lag = meter.create_histogram_float(
                    RECONCILE_LAG.name, RECONCILE_LAG.help, "s"
                )
            seconds = max((now - self._since).total_seconds(), 0.0)
            self._lag.record(seconds, {"account": self.account, "change": self._change})
            self._since = None
        if state.status.is_terminal and not self._finished:
            self._finished = True
            if self._outcomes is None:
                self._outcomes = meter.create_counter(FINISHED.instrument, FINISHED.help)
            self._outcomes.add(1, {"account": self.account, "status": state.status.value})

    def _changed(self, change: str, now: datetime) -> None:
        # A change on top of one not yet reconciled keeps the earlier start: the lag is how long
        # the exchange has differed from what the strategy asked for.
        if self._since is None:
            self._since = now
            self._change = change


# --- gauges from visibility -----------------------------------------------------------------------


class IntentGauges:
    """Intents by status and pending reconciliations, counted in Temporal visibility.

    A workflow can only report itself, so gauges of "how many" are counted where every intent is
    visible: a handful of count queries per interval, constant in the number of intents. Every
    worker polling the same task queue reports the same numbers: aggregate with max, not sum.
    """

    def __init__(
        self,
        client: Client,
        task_queue: str,
        accounts: Sequence[str],
        every: timedelta = timedelta(seconds=15),
    ) -> None:
        self.client = client
        self.task_queue = task_queue
        self.accounts = list(accounts)
        self.every = every
        meter = client.service_client.config.runtime.metric_meter
        self._intents = meter.create_gauge(INTENTS.name, INTENTS.help)
        self._pending = meter.create_gauge(PENDING.name, PENDING.help)
        self._task: asyncio.Task[None] | None = None

    async def refresh(self) -> None:
        running = (
            "WorkflowType = 'OrderIntent' AND ExecutionStatus = 'Running' "
            f"AND TaskQueue = '{_quoted(self.task_queue)}'"
        )
        for account in self.accounts:
            base = f"{running} AND IntentAccount = '{_quoted(account)}'"
            for status in RUNNING_STATUSES:
                count = await self._count(f"{base} AND IntentStatus = '{status.value}'")
                self._intents.set(count, {"account": account, "status": status.value})
            for reconciliation in UNSETTLED:
                count = await self._count(
                    f"{base} AND ReconciliationStatus = '{reconciliation.value}'"
                )
                self._pending.set(
                    count, {"account": account, "reconciliation_status": reconciliation.value}
                )

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # visibility hiccups must not stop the worker
                log.warning("counting intents in visibility failed: %s", exc)
            await asyncio.sleep(self.every.total_seconds())

    async def __aenter__(self) -> IntentGauges:
        self._task = asyncio.create_task(self.run(), name="exchange-kernel intent gauges")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _count(self, query: str) -> int:
        return (await self.client.count_workflows(query)).count


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# --- OpenTelemetry tracing (the `otel` extra) -----------------------------------------------------


def tracing_requested(flag: bool = False) -> bool:
    """`--otel`, or EXCHANGE_KERNEL_OTEL set to 1/true/yes."""
    return flag or os.environ.get(OTEL_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def tracing_interceptor() -> Any:
    """Temporal's TracingInterceptor on a tracer provider that exports somewhere.

    If the application has not installed a tracer provider, one is installed that exports
    with OTLP over HTTP (OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318), or to
    standard output with OTEL_TRACES_EXPORTER=console. Raises ImportError naming the extra
    when it is not installed.
    """
    try:
        from opentelemetry import trace
        from temporalio.contrib.opentelemetry import TracingInterceptor
    except ImportError as exc:
        raise ImportError(
            "OpenTelemetry tracing needs the otel extra: pip install 'exchange-kernel[otel]' "
            f"({exc})"
        ) from None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(_tracer_provider())
    # Workflows started by an untraced client (the CLI, a schedule) get spans too.
    return TracingInterceptor(always_create_workflow_spans=True)


def _tracer_provider() -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SimpleSpanProcessor,
    )

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "exchange-kernel"}
    provider = TracerProvider(resource=Resource.create(attributes))
    exporter = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    elif exporter != "none":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def with_tracing(client: Client, interceptor: Any = None) -> Client:
    """The same connection with the tracing interceptor added; a worker built on it traces
    workflows and activities, an IntentClient on it traces starts, signals and updates."""
    from temporalio.client import Client

    config = client.config()
    config["interceptors"] = [*config["interceptors"], interceptor or tracing_interceptor()]
    return Client(**config)


# --- what `worker` and `dev` were asked for -------------------------------------------------------


@dataclass
class Telemetry:
    """The metrics runtime and the tracing interceptor of one worker process, set up before
    anything connects so that a taken port or a missing extra is reported first."""

    runtime: Runtime | None = None
    url: str | None = None
    tracing: Any = None

    @classmethod
    def configure(cls, metrics_port: str | int | None = None, otel: bool = False) -> Telemetry:
        """Raises ValueError (bad port), OSError (port taken), ImportError (no otel extra)."""
        telemetry = cls()
        if metrics_port is not None and str(metrics_port) != "":
            telemetry.runtime = metrics_runtime(metrics_port)
            telemetry.url = metrics_url(metrics_port)
        if tracing_requested(otel):
            telemetry.tracing = tracing_interceptor()
        return telemetry

    @property
    def metrics(self) -> bool:
        return self.runtime is not None

    def traced(self, client: Client) -> Client:
        return client if self.tracing is None else with_tracing(client, self.tracing)


# --- reading a scrape back (`exchange-kernel metrics`) --------------------------------------------


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Family:
    name: str
    kind: str = "untyped"
    help: str = ""
    samples: list[Sample] = field(default_factory=list)


_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}
# Labels every series of a worker shares; the summary leaves them out.
CONTEXT_LABELS = frozenset({"service_name", "namespace", "task_queue", "workflow_type"})


def parse(text: str) -> dict[str, Family]:
    """Prometheus text exposition format -> families by name (histogram parts folded in)."""
    families: dict[str, Family] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = families.setdefault(parts[2], Family(parts[2]))
                rest = parts[3] if len(parts) > 3 else ""
                if parts[1] == "TYPE":
                    family.kind = rest
                else:
                    family.help = rest
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, raw_labels, raw_value = match.groups()
        labels = {
            key: re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group(0)], value)
            for key, value in _LABEL.findall(raw_labels or "")
        }
        family = families.get(name) or families.get(_histogram_base(name)) or Family(name)
        families.setdefault(family.name, family)
        family.samples.append(Sample(name, labels, _number(raw_value)))
    return families


def _histogram_base(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def _number(text: str) -> float:
    return float(text)  # float() reads Prometheus' +Inf, -Inf and NaN spellings


@dataclass
class Row:
    """One line of the summary: a series with its context labels dropped and the rest summed."""

    metric: str
    kind: str
    labels: dict[str, str]
    help: str = ""
    value: float | None = None  # counters and gauges
    count: float | None = None  # histograms from here on
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"metric": self.metric, "type": self.kind, "labels": self.labels}
        for key in ("value", "count", "mean", "p50", "p95"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        return data


def summarize(families: dict[str, Family], prefixes: Iterable[str] = (PREFIX,)) -> list[Row]:
    prefixes = tuple(prefixes)
    rows: list[Row] = []
    for family in sorted(families.values(), key=lambda f: f.name):
        if not family.name.startswith(prefixes) or not family.samples:
            continue
        if family.kind == "histogram":
            rows.extend(_histogram_rows(family))
        else:
            totals: dict[tuple[tuple[str, str], ...], float] = {}
            for sample in family.samples:
                key = _key(sample.labels)
                totals[key] = totals.get(key, 0.0) + sample.value
            rows.extend(
                Row(family.name, family.kind, dict(k), _help(family), value=v)
                for k, v in totals.items()
            )
    return rows


def _help(family: Family) -> str:
    ours = next((m.help for m in METRICS if m.name == family.name), None)
    return ours or family.help


def label_columns(metric: str, rows: Iterable[Row]) -> list[str]:
    """The labels of a metric's rows: in the documented order for ours, sorted for the SDK's."""
    present = {label for row in rows for label in row.labels}
    ours = next((m.labels for m in METRICS if m.name == metric), ())
    return [label for label in ours if label in present] + sorted(present - set(ours))


def _key(labels: dict[str, str], drop: Iterable[str] = ()) -> tuple[tuple[str, str], ...]:
    dropped = CONTEXT_LABELS | set(drop)
    return tuple(sorted((k, v) for k, v in labels.items() if k not in dropped))


def _histogram_rows(family: Family) -> list[Row]:
    buckets: dict[tuple[tuple[str, str], ...], dict[float, float]] = {}
    sums: dict[tuple[tuple[str, str], ...], float] = {}
    counts: dict[tuple[tuple[str, str], ...], float] = {}
    for sample in family.samples:
        key = _key(sample.labels, drop=("le",))
        if sample.name.endswith("_bucket"):
            bound = _number(sample.labels.get("le", "+Inf"))
            series = buckets.setdefault(key, {})
            series[bound] = series.get(bound, 0.0) + sample.value
        elif sample.name.endswith("_sum"):
            sums[key] = sums.get(key, 0.0) + sample.value
        elif sample.name.endswith("_count"):
            counts[key] = counts.get(key, 0.0) + sample.value
    rows = []
    for key, count in counts.items():
        cumulative = sorted(buckets.get(key, {}).items())
        rows.append(
            Row(
                family.name,
                "histogram",
                dict(key),
                _help(family),
                count=count,
                mean=sums.get(key, 0.0) / count if count else None,
                p50=quantile(0.5, cumulative),
                p95=quantile(0.95, cumulative),
            )
        )
    return rows


def quantile(q: float, cumulative: Sequence[tuple[float, float]]) -> float | None:
    """Like PromQL's histogram_quantile: linear within the bucket that holds the rank."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank = q * cumulative[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower  # above the highest finite bucket: its bound is all we know
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


SCRAPE_TIMEOUT = 5.0


async def scrape(url: str) -> str:
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session,
        session.get(url) as response,
    ):
        response.raise_for_status()
        return await response.text()


async def read(url: str = DEFAULT_METRICS_URL, *, everything: bool = False) -> list[Row]:
    """Scrape a worker and summarize its exchange_kernel_* series (and temporal_* too)."""
    families = parse(await scrape(url))
    return summarize(families, (PREFIX, "temporal_") if everything else (PREFIX,))


def _implicit_endpoint(client: Any, name: str) -> bool:
    """One of ccxt's implicit API methods (`privateGetOpenOrders`): a request, counted as such."""
    return isinstance(inspect.getattr_static(type(client), name, None), Entry)
