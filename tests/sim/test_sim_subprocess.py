"""`python -m exchange_kernel.sim` as a separate process, reached by ccxt over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys

import pytest

from exchange_kernel.sim import binance_client


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_module_entry_point_serves_ccxt_and_stops_on_sigterm() -> None:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exchange_kernel.sim",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--account",
        "cli-key:cli-secret",
        "--fee",
        "0.002",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = binance_client(f"http://127.0.0.1:{port}", "cli-key", "cli-secret", timeout_on_exit=0)
    try:
        assert process.stdout is not None
        banner = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        assert f"listening on http://127.0.0.1:{port}".encode() in banner, banner

        await client.load_markets()
        order = await client.create_order("BTC/USDT", "market", "buy", 0.1)
        assert order["status"] == "closed"
        assert order["fee"]["cost"] == pytest.approx(0.0002)  # --fee 0.002 in BTC
        balance = await client.fetch_balance()
        assert balance["BTC"]["total"] == pytest.approx(100 + 0.1 - 0.0002)
    finally:
        await client.close()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            returncode = await asyncio.wait_for(process.wait(), timeout=15)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise
    stderr = await process.stderr.read() if process.stderr else b""
    assert returncode == 0, stderr.decode()
