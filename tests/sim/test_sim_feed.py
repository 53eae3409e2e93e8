"""Markets that move by themselves: the random walk and the candle replay (`sim.feed`)."""

from __future__ import annotations

import asyncio
import itertools
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exchange_kernel.cli import app
from exchange_kernel.sim import DEMO_API_KEY, DEMO_SECRET, Exchange, binance_client, running_sim
from exchange_kernel.sim.admin_client import AdminClient
from exchange_kernel.sim.engine import NewOrder, OrderStatus, OrderType, Side, TimeInForce
from exchange_kernel.sim.feed import (
    CandleReplay,
    CsvCandle,
    RandomWalk,
    feed_from_options,
    read_candles,
)
from tests.conftest import eventually

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "feeds" / "btcusdt-1m.csv"
D = Decimal


def _walk(seed: int, steps: int, volatility: str = "0.001") -> list[Decimal]:
    exchange = Exchange(accounts={DEMO_API_KEY: DEMO_SECRET})
    walk = RandomWalk(seed=seed, volatility=D(volatility))
    path = []
    for _ in range(steps):
        walk.advance(exchange)
        path.append(exchange.last_price("BTCUSDT"))
    return path


def _resting_buy(exchange: Exchange, price: str, qty: str = "0.5") -> int:
    request = NewOrder(
        symbol="BTCUSDT",
        side=Side.BUY,
        type=OrderType.LIMIT,
        quantity=D(qty),
        price=D(price),
        time_in_force=TimeInForce.GTC,
    )
    return exchange.place_order(DEMO_API_KEY, request).order.order_id


def _candle(open_: str, high: str, low: str, close: str, volume: str | None = None) -> CsvCandle:
    return CsvCandle(0, D(open_), D(high), D(low), D(close), None if volume is None else D(volume))


# ---------------------------------------------------------------------- random walk


def test_random_walk_with_a_seed_walks_the_same_path() -> None:
    assert _walk(7, 50) == _walk(7, 50)
    assert _walk(7, 50) != _walk(8, 50)


def _fills_under_a_walk(seed: int) -> list[tuple[int, int, Decimal, Decimal, bool]]:
    """Resting buys on a ladder below the price, a seeded walk of 400 steps: each trade, with
    the step of the walk that made it."""
    exchange = Exchange(accounts={DEMO_API_KEY: DEMO_SECRET})
    for price in ("29990", "29970", "29950", "29930", "29900"):
        _resting_buy(exchange, price, qty="0.1")
    walk = RandomWalk(seed=seed, volatility=D("0.001"))
    fills = []
    for step in range(400):
        before = len(exchange.trades)
        walk.advance(exchange)
        fills += [(step, t.order_id, t.price, t.qty, t.is_maker) for t in exchange.trades[before:]]
    return fills


def test_fills_under_a_seeded_walk_are_the_same_run_after_run() -> None:
    first = _fills_under_a_walk(7)
    assert first, "seed 7 crosses some of the ladder"
    assert _fills_under_a_walk(7) == first
    assert _fills_under_a_walk(8) != first


def test_random_walk_prices_are_decimals_on_the_tick() -> None:
    path = _walk(7, 200, volatility="0.01")
    assert len(set(path)) > 100, "the price moves"
    for price in path:
        assert isinstance(price, Decimal)
        assert price > 0 and price % D("0.01") == 0


def test_random_walk_moves_every_symbol_by_about_its_volatility() -> None:
    exchange = Exchange()
    walk = RandomWalk(seed=7, volatility=D("0.001"))
    walk.advance(exchange)
    for symbol, start in (("BTCUSDT", D(30000)), ("ETHUSDT", D(2000)), ("SOLUSDT", D(100))):
        moved = abs(exchange.last_price(symbol) / start - 1)
        assert 0 < moved < D("0.005"), symbol


def test_random_walk_steps_on_from_a_price_posted_by_hand() -> None:
    exchange = Exchange()
    walk = RandomWalk(seed=7, volatility=D("0.001"))
    walk.advance(exchange)
    exchange.set_price("BTCUSDT", D(40000))  # what POST /sim/v1/price does
    walk.advance(exchange)
    assert abs(exchange.last_price("BTCUSDT") - 40000) < 200


def test_random_walk_fills_a_crossing_resting_order_as_a_posted_price_does() -> None:
    exchange = Exchange(accounts={DEMO_API_KEY: DEMO_SECRET})
    order_id = _resting_buy(exchange, "29950")
    walk = RandomWalk(seed=7, volatility=D("0.001"))
    for _ in range(500):
        walk.advance(exchange)
        if exchange.last_price("BTCUSDT") <= 29950:
            break
    else:
        pytest.fail("seed 7 never walked down to 29950 in 500 steps")
    order = exchange.orders[order_id]
    assert order.status is OrderStatus.FILLED
    [trade] = exchange.trades
    assert (trade.price, trade.qty, trade.is_maker) == (D("29950"), D("0.5"), True)


def test_random_walk_refuses_a_volatility_of_one_or_more() -> None:
    with pytest.raises(ValueError, match="volatility"):
        RandomWalk(volatility=D(1))


# ---------------------------------------------------------------------- candle replay


def test_candle_replay_plays_open_the_nearer_extreme_the_other_and_close() -> None:
    exchange = Exchange()
    rising = _candle("30000", "30300", "29900", "30200")
    falling = _candle("30200", "30250", "29800", "29850")
    replay = CandleReplay([rising, falling], interval=1.0)
    seen = []
    while True:
        more = replay.advance(exchange)
        seen.append(exchange.last_price("BTCUSDT"))
        if not more:
            break
    assert seen == [D(p) for p in ("30000 29900 30300 30200 30200 30250 29800 29850").split()]
    assert replay.step_seconds == 0.25


def test_candle_replay_fills_a_resting_order_its_low_crosses() -> None:
    exchange = Exchange(accounts={DEMO_API_KEY: DEMO_SECRET})
    order_id = _resting_buy(exchange, "29950")
    replay = CandleReplay([_candle("30000", "30100", "29900", "30050")])
    while replay.advance(exchange):
        pass
    assert exchange.orders[order_id].status is OrderStatus.FILLED
    assert exchange.last_price("BTCUSDT") == 30050


def test_candle_replay_fills_at_most_the_candles_volume() -> None:
    exchange = Exchange(accounts={DEMO_API_KEY: DEMO_SECRET})
    first = _resting_buy(exchange, "29950", "0.3")
    second = _resting_buy(exchange, "29940", "0.3")
    replay = CandleReplay([_candle("30000", "30000", "29900", "29900", volume="0.4")])
    while replay.advance(exchange):
        pass
    assert exchange.orders[first].status is OrderStatus.FILLED
    assert exchange.orders[second].executed_qty == D("0.1")


def test_candle_replay_loops_when_asked() -> None:
    exchange = Exchange()
    replay = CandleReplay([_candle("30000", "30100", "29900", "30050")], loop=True)
    assert all(replay.advance(exchange) for _ in range(9))
    assert exchange.last_price("BTCUSDT") == 30000  # the third time round, its open


def test_sample_csv_is_an_hour_of_btcusdt_minutes() -> None:
    candles = read_candles(SAMPLE)
    assert len(candles) == 60
    assert candles[0].open == 30000
    assert all(b.timestamp - a.timestamp == 60_000 for a, b in itertools.pairwise(candles))
    assert all(a.close == b.open for a, b in itertools.pairwise(candles))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no candles"),
        ("1,30000,30100,29900\n", "expected timestamp,open,high,low,close"),
        ("1,30000,30100,29900,abc\n", "not a number"),
        ("1,30000,29000,29900,30000\n", "low <= open, close <= high"),
        ("1,30000,30100,29900,30000,-1\n", "volume must not be negative"),
    ],
)
def test_a_bad_candle_file_is_refused_with_its_line(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_candles(path)


def test_feed_options_name_a_walk_or_a_file(tmp_path: Path) -> None:
    assert feed_from_options(None) is None
    walk = feed_from_options("random-walk", seed=7, volatility=D("0.002"), interval=0.5)
    assert isinstance(walk, RandomWalk) and walk.step_seconds == 0.5
    replay = feed_from_options(str(SAMPLE), symbol="BTC/USDT", interval=2.0)
    assert isinstance(replay, CandleReplay) and replay.symbol == "BTCUSDT"
    with pytest.raises(ValueError, match="neither 'random-walk' nor a CSV file"):
        feed_from_options(str(tmp_path / "missing.csv"))


# ---------------------------------------------------------------------- served


async def test_a_served_random_walk_fills_a_ccxt_order_and_the_admin_api_still_moves_prices() -> (
    None
):
    walk = RandomWalk(seed=7, volatility=D("0.002"), step_seconds=0.005)
    async with running_sim(feed=walk) as sim, AdminClient(sim.base_url) as admin:
        client = binance_client(sim.base_url, DEMO_API_KEY, DEMO_SECRET, timeout_on_exit=0)
        try:
            await client.load_markets()
            last = (await client.fetch_ticker("BTC/USDT"))["last"]
            limit = round(last - 20)
            order = await client.create_order("BTC/USDT", "limit", "buy", 0.1, limit)

            async def filled() -> bool:
                return (await client.fetch_order(order["id"], "BTC/USDT"))["status"] == "closed"

            await eventually("the walk fills the resting buy", filled)
            [trade] = await client.fetch_my_trades("BTC/USDT")
            # The walk moves every 5 ms: on a loaded machine it may have passed the limit before
            # the order arrived (then it takes at a better price). Resting, it fills at its limit.
            if trade["takerOrMaker"] == "maker":
                assert trade["price"] == pytest.approx(limit)
            else:
                assert trade["price"] <= limit
            await admin.price("ETHUSDT", "2500")

            async def walked_on_from_2500() -> bool:
                price = D((await admin.prices())["ETHUSDT"])
                return price != 2500 and abs(price - 2500) < 100

            await eventually("the walk steps on from 2500", walked_on_from_2500)
            candles = await client.fetch_ohlcv("BTC/USDT", "1s")
            assert candles and max(c[2] for c in candles) > min(c[3] for c in candles)
        finally:
            await client.close()


async def test_the_sample_csv_replays_through_the_server() -> None:
    replay = CandleReplay(read_candles(SAMPLE), interval=0.01)
    async with running_sim(feed=replay) as sim:

        async def at_the_last_close() -> bool:
            return sim.exchange.last_price("BTCUSDT") == D("29618.71")

        await eventually("the replay reaches its last close", at_the_last_close)
        history = sim.exchange.markets["BTCUSDT"].price_history
        assert len(history) == 1 + 60 * 4


async def test_a_stopped_server_stops_its_feed() -> None:
    walk = RandomWalk(seed=7, step_seconds=0.005)
    async with running_sim(feed=walk) as sim:
        await asyncio.sleep(0.05)
    moves = len(sim.exchange.markets["BTCUSDT"].price_history)
    await asyncio.sleep(0.05)
    assert len(sim.exchange.markets["BTCUSDT"].price_history) == moves


# ---------------------------------------------------------------------- command line


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--feed", "no-such-file.csv"], "neither 'random-walk' nor a CSV file"),
        (["--feed", str(SAMPLE), "--feed-symbol", "DOGEUSDT"], "unknown symbol 'DOGEUSDT'"),
        (["--feed", "random-walk", "--volatility", "2"], "volatility must be in"),
    ],
)
def test_sim_and_dev_refuse_an_unusable_feed_before_starting(args: list[str], message: str) -> None:
    for command in ("sim", "dev"):
        result = CliRunner().invoke(app, [command, *args])
        assert result.exit_code == 2, result.output
        assert message in " ".join(result.output.split())
