"""A native amend redone after its workflow task was lost (a reset, a task that timed out) finds
the replacement it already placed instead of reporting it missing (which would place another)."""

from __future__ import annotations

import uuid
from decimal import Decimal

from temporalio.testing import ActivityEnvironment

from exchange_kernel.accounts import ExchangePool
from exchange_kernel.activities.exchange import ExchangeActivities
from exchange_kernel.models import AmendRequest, OrderRequest
from tests.conftest import Paper, paper_accounts


async def test_a_redone_amend_reports_the_replacement_it_already_placed(paper: Paper) -> None:
    pool = ExchangePool(paper_accounts(paper.base_url))
    exchange = ExchangeActivities(pool)
    env = ActivityEnvironment()
    await paper.move_price("BTC/USDT", "30000")
    prefix = f"ek-redo{uuid.uuid4().hex[:8]}-"
    try:
        first = OrderRequest(
            account="paper",
            symbol="BTC/USDT",
            side="buy",
            type="limit",
            client_order_id=f"{prefix}0",
            amount=Decimal("0.01"),
            price=Decimal("29000"),
        )
        placed = await env.run(exchange.place_order, first)
        amend = AmendRequest(
            account="paper",
            replaces_client_order_id=first.client_order_id,
            replaces_exchange_order_id=placed.exchange_order_id,
            order=first.model_copy(
                update={"client_order_id": f"{prefix}1", "price": Decimal("29100")}
            ),
        )
        done = await env.run(exchange.amend_order, amend)
        assert done.order is not None and done.replaced is not None
        assert not done.replaced.status.is_live

        # The same request again, as a first attempt: what a redone workflow task sends.
        again = await env.run(exchange.amend_order, amend)
        assert again.order is not None
        assert again.order.exchange_order_id == done.order.exchange_order_id

        orders = await paper.orders_of(prefix)
        assert len(orders) == 2, orders
        assert [o["client_order_id"] for o in orders if o["status"] == "NEW"] == [f"{prefix}1"]
    finally:
        await pool.close()
