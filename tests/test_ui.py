"""The Temporal UI as a person sees it: headless Chromium against a dev server with its UI.

Filtering the workflow list by `IntentStatus="open" AND IntentSymbol="BTC/USDT"` must show
exactly the live BTC book, and an intent's memo tab must show its summary line.

Needs Debian's chromium (`apt-get install chromium`). EK_UI_SCREENSHOT=docs/ui.png refreshes the
screenshot in the docs.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from exchange_kernel.accounts import AccountConfig
from exchange_kernel.client import IntentClient
from exchange_kernel.connection import connect
from exchange_kernel.devserver import DevServer, free_port
from exchange_kernel.models import IntentState, IntentStatus, OrderIntent, OrderSpec
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, running_sim
from exchange_kernel.worker import run_worker
from tests.conftest import Paper

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)

TASK_QUEUE = "exchange-kernel-ui-tests"
KEY_ENV = "EK_TEST_UI_KEY"
SECRET_ENV = "EK_TEST_UI_SECRET"
LIVE_BTC_BOOK = 'IntentStatus="open" AND IntentSymbol="BTC/USDT"'
# Virtual time runs the UI's requests and rendering without waiting in real time. A running
# workflow's own pages long-poll its history, so virtual time never ends there: the checks that
# need a workflow page use a finished one.
VIRTUAL_TIME_MS = 15_000
CHROMIUM_TIMEOUT_S = 90


@dataclass
class Book:
    ui_url: str
    intents: IntentClient
    open_btc: list[OrderIntent]
    filled_btc: OrderIntent
    open_eth: OrderIntent


def order(symbol: str, price: str | None, **spec: str) -> OrderIntent:
    return OrderIntent(
        intent_id=f"ui-{uuid.uuid4().hex[:8]}",
        account="paper",
        order=OrderSpec(symbol=symbol, side="buy", amount="0.01", price=price, **spec),
    )


def resting(state: IntentState) -> bool:
    return state.status is IntentStatus.OPEN and state.reconciliation_status.value == "in_sync"


@pytest.fixture(scope="module")
async def book() -> AsyncIterator[Book]:
    """A dev server with its UI, the paper exchange, a worker; two open BTC intents, a filled
    BTC intent and an open ETH intent."""
    os.environ[KEY_ENV] = DEMO_API_KEY
    os.environ[SECRET_ENV] = DEMO_SECRET
    server = DevServer(port=free_port(), ui_port=free_port())
    await server.start()
    try:
        async with running_sim(port=0) as sim, aiohttp.ClientSession() as session:
            paper = Paper(base_url=sim.base_url, session=session, server=sim)
            await paper.move_price("BTC/USDT", "30000")
            await paper.move_price("ETH/USDT", "2000")
            account = AccountConfig(
                name="paper",
                exchange="binance",
                api_key_env=KEY_ENV,
                secret_env=SECRET_ENV,
                base_url=sim.base_url,
            )
            client = await connect(server.target)
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(client, {"paper": account}, TASK_QUEUE, stop))
            try:
                yield await _submit_book(IntentClient(client, TASK_QUEUE), str(server.ui_url))
            finally:
                stop.set()
                await worker
    finally:
        await server.stop()


async def _submit_book(intents: IntentClient, ui_url: str) -> Book:
    book = Book(
        ui_url=ui_url,
        intents=intents,
        open_btc=[order("BTC/USDT", "29000"), order("BTC/USDT", "29500")],
        filled_btc=order("BTC/USDT", None, type="market"),
        open_eth=order("ETH/USDT", "1900"),
    )
    for intent in (*book.open_btc, book.filled_btc, book.open_eth):
        await intents.submit(intent)
    assert (await intents.result(book.filled_btc.intent_id)).status is IntentStatus.FILLED
    for intent in (*book.open_btc, book.open_eth):
        await intents.wait_for(intent.intent_id, resting)
    # The UI reads visibility, which trails the workflows by a moment.
    expected = {intent.intent_id for intent in book.open_btc}
    async with asyncio.timeout(20):
        while True:
            listed = await intents.list(status="open", symbol="BTC/USDT")
            if {row.intent_id for row in listed} == expected:
                break
            await asyncio.sleep(0.2)
    return book


async def chromium(profile: Path, *args: str) -> bytes:
    """Run headless Chromium to completion; its stdout (the DOM for --dump-dom)."""
    process = await asyncio.create_subprocess_exec(
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={VIRTUAL_TIME_MS}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        stdout, _ = await asyncio.wait_for(process.communicate(), CHROMIUM_TIMEOUT_S)
    except TimeoutError:
        os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode == 0, f"chromium exited with {process.returncode}"
    return stdout


def workflows_url(book: Book, query: str) -> str:
    return f"{book.ui_url}/namespaces/default/workflows?query={quote(query, safe='')}"


async def test_filtering_the_ui_by_status_and_symbol_shows_exactly_the_live_btc_book(
    book: Book, tmp_path: Path
) -> None:
    dom = (await chromium(tmp_path, "--dump-dom", workflows_url(book, LIVE_BTC_BOOK))).decode()
    for intent in book.open_btc:
        assert intent.workflow_id in dom
    assert book.filled_btc.workflow_id not in dom
    assert book.open_eth.workflow_id not in dom


async def test_the_memo_tab_shows_the_intent_summary(book: Book, tmp_path: Path) -> None:
    handle = book.intents.temporal.get_workflow_handle(book.filled_btc.workflow_id)
    described = await handle.describe()
    summary = (await described.memo())["summary"]
    assert summary == book.filled_btc.summary()
    url = f"{book.ui_url}/namespaces/default/workflows/{described.id}/{described.run_id}/memo"
    dom = (await chromium(tmp_path, "--dump-dom", url)).decode()
    assert f'"{summary}"' in dom


async def test_the_filtered_list_renders_as_a_screenshot(book: Book, tmp_path: Path) -> None:
    target = Path(os.environ.get("EK_UI_SCREENSHOT") or tmp_path / "ui.png")
    profile = tmp_path / "profile"
    await chromium(profile, f"--screenshot={target.resolve()}", workflows_url(book, LIVE_BTC_BOOK))
    assert target.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert target.stat().st_size > 10_000  # a rendered page, not a blank one
