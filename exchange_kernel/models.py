"""The vocabulary of exchange-kernel: intents (desired), exchange orders and fills (observed).

Every model validates at construction, so a bad intent is refused when it is built: before any
workflow starts and before any exchange call. Values are frozen; amounts and prices are Decimal.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta
from decimal import Context, Decimal
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

MAX_DECIMALS = 18
MAX_MAGNITUDE = Decimal("1e15")
CLIENT_ORDER_ID_PREFIX = "ek"


class Value(BaseModel):
    """A frozen value that rejects unknown fields (a typo is an error, not a silent default)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_quantity(value: Decimal | None, name: str) -> Decimal | None:
    if value is None:
        return None
    if not value.is_finite():
        raise ValueError(f"{name} must be a finite number, got {value}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    if value >= MAX_MAGNITUDE:
        raise ValueError(f"{name} is too large: {value}")
    # Normalize in a context wide enough for every digit: the default one (28 digits) would round
    # 0.1000000000000000000000000000001 to 0.1 and let its 31 decimals through.
    exponent = value.normalize(Context(prec=len(value.as_tuple().digits))).as_tuple().exponent
    if isinstance(exponent, int) and -exponent > MAX_DECIMALS:
        raise ValueError(f"{name} has more than {MAX_DECIMALS} decimals: {value}")
    return value


def _refuse_float(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(
            f"use a Decimal or a string, not a float ({value!r}): binary floats cannot hold "
            "most prices exactly"
        )
    return value


Money = Annotated[Decimal, BeforeValidator(_refuse_float)]


ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def _identifier(value: str) -> str:
    if not ID_RE.fullmatch(value):
        raise ValueError(f"must be 1-128 characters of letters, digits and . _ : - (got {value!r})")
    return value


# Intent, group, account and strategy ids: they end up in workflow ids and search attributes.
Identifier = Annotated[str, AfterValidator(_identifier)]


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderType(StrEnum):
    MARKET = "market"
    LIMIT = "limit"
    STOP_LIMIT = "stop_limit"  # a limit order released when the last price crosses stop_price
    STOP_MARKET = "stop_market"  # a market order released when the last price crosses stop_price

    @property
    def is_stop(self) -> bool:
        return self in STOP_TYPES

    @property
    def released_as(self) -> OrderType:
        """The order a stop becomes when it triggers (itself for the other types)."""
        return RELEASED_AS.get(self, self)


STOP_TYPES = frozenset({OrderType.STOP_LIMIT, OrderType.STOP_MARKET})
RELEASED_AS = {OrderType.STOP_LIMIT: OrderType.LIMIT, OrderType.STOP_MARKET: OrderType.MARKET}


class TimeInForce(StrEnum):
    GTC = "GTC"
    IOC = "IOC"
    FOK = "FOK"


class IntentStatus(StrEnum):
    PENDING = "pending"
    OPEN = "open"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset(
    {
        IntentStatus.FILLED,
        IntentStatus.CANCELED,
        IntentStatus.EXPIRED,
        IntentStatus.REJECTED,
        IntentStatus.FAILED,
    }
)


class ReconciliationStatus(StrEnum):
    """How the exchange compares with the intent right now."""

    IN_SYNC = "in_sync"  # the exchange matches the intent (resting as desired, or finished)
    RECONCILING = "reconciling"  # an action towards the intent is under way
    UNKNOWN = "unknown"  # an action's outcome is unknown; a lookup must resolve it first
    # Resting as desired as far as the kernel knows, but its view of the exchange is older
    # than `reconcile.STALE_AFTER` (or the account sync has lost sight of the account).
    STALE = "stale"


class ExternalCancelPolicy(StrEnum):
    """What to do when the exchange order is cancelled by someone other than the kernel."""

    FINISH = "finish"
    RESTORE = "restore"


class ExchangeOrderStatus(StrEnum):
    """ccxt's unified order status."""

    OPEN = "open"
    CLOSED = "closed"
    CANCELED = "canceled"
    EXPIRED = "expired"
    REJECTED = "rejected"

    @property
    def is_live(self) -> bool:
        return self is ExchangeOrderStatus.OPEN


SYMBOL_RE = re.compile(r"^[A-Z0-9]{1,20}/[A-Z0-9]{1,20}$")


class OrderSpec(Value):
    """What order the strategy wants on the exchange."""

    symbol: str
    side: Side
    type: OrderType = OrderType.LIMIT
    amount: Money
    price: Money | None = None
    stop_price: Money | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    reduce_only: bool = False

    @field_validator("symbol")
    @classmethod
    def _symbol_form(cls, value: str) -> str:
        if not SYMBOL_RE.fullmatch(value):
            raise ValueError(
                f"symbol must look like BTC/USDT (BASE/QUOTE, upper case), got {value!r}"
            )
        return value

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: Decimal) -> Decimal:
        return _check_quantity(value, "amount")  # type: ignore[return-value]

    @field_validator("price")
    @classmethod
    def _price(cls, value: Decimal | None) -> Decimal | None:
        return _check_quantity(value, "price")

    @field_validator("stop_price")
    @classmethod
    def _stop_price(cls, value: Decimal | None) -> Decimal | None:
        return _check_quantity(value, "stop_price")

    @model_validator(mode="after")
    def _type_rules(self) -> Self:
        if self.type in (OrderType.MARKET, OrderType.STOP_MARKET):
            kind = self.type.value.replace("_", "-")
            if self.price is not None:
                raise ValueError(f"price: a {kind} order takes no price")
            if self.type is OrderType.MARKET and self.stop_price is not None:
                raise ValueError("stop_price: a market order takes no stop_price")
            if self.post_only:
                raise ValueError(f"post_only: a {kind} order cannot be post-only")
        else:
            if self.price is None:
                raise ValueError(f"price: a {self.type.value} order needs a price")
        if self.type.is_stop and self.stop_price is None:
            raise ValueError(f"stop_price: a {self.type.value} order needs a stop_price")
        if self.type is OrderType.LIMIT and self.stop_price is not None:
            raise ValueError("stop_price: only a stop_limit or stop_market order takes one")
        if self.post_only and self.time_in_force is not TimeInForce.GTC:
            raise ValueError("post_only: a post-only order must be GTC")
        if self.post_only and self.type.is_stop:
            # ccxt sends a post-only stop-limit to Binance spot as a plain LIMIT_MAKER: the
            # trigger would be lost.
            raise ValueError("post_only: a stop order cannot be post-only")
        return self

    @property
    def base(self) -> str:
        return self.symbol.split("/")[0]

    @property
    def quote(self) -> str:
        return self.symbol.split("/")[1]

    def summary(self) -> str:
        """One line for people: `buy 0.5 BTC/USDT @ 30000`."""
        text = f"{self.side.value} {self.amount:f} {self.symbol}"
        if self.type is OrderType.MARKET:
            return f"{text} @ market"
        text = f"{text} @ {'market' if self.price is None else f'{self.price:f}'}"
        if self.stop_price is not None:
            text = f"{text} stop {self.stop_price:f}"
        return text


class OrderIntent(Value):
    """A durable wish: keep this order on this account until it is done."""

    intent_id: Identifier
    account: Identifier
    order: OrderSpec
    group_id: Identifier | None = None
    strategy_id: Identifier | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    on_external_cancel: ExternalCancelPolicy = ExternalCancelPolicy.FINISH
    expires_at: datetime | None = Field(
        default=None, description="good till this time: then cancelled, outcome expired"
    )
    # A stop the workflow holds even where the exchange takes stop orders (nothing is locked
    # on the exchange until it triggers: a bracket's stop-loss beside its resting take-profit).
    hold_stop: bool = False
    # Once triggered, the held stop waits for its group's `release` (the group first cancels
    # the take-profit that locks what the stop-loss is to sell).
    release_by_group: bool = False
    stale_after: timedelta | None = Field(
        default=None,
        ge=timedelta(seconds=2),
        le=timedelta(days=1),
        description="how old the kernel's view of the intent's order may get before its "
        "reconciliation says `stale` (None: the kernel's 30 s); an intent that polls its own "
        "order looks at least twice within it (one its account sync watches is `stale` when "
        "the sync says its rounds lapsed, on the sync's own bound)",
    )

    @model_validator(mode="after")
    def _held(self) -> Self:
        if (self.hold_stop or self.release_by_group) and not self.order.type.is_stop:
            raise ValueError("hold_stop / release_by_group: only a stop order can be held")
        if self.release_by_group and (self.group_id is None or not self.hold_stop):
            raise ValueError("release_by_group: a held stop (hold_stop) of a group only")
        return self

    @field_validator("expires_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.utcoffset() is None:
            raise ValueError("expires_at needs a time zone (e.g. 2026-01-01T12:00:00Z)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 32:
            raise ValueError("at most 32 tags")
        for key, item in value.items():
            if not key or len(key) > 64 or len(item) > 256:
                raise ValueError(f"tag {key!r}: keys are 1-64 characters, values up to 256")
        return value

    @property
    def workflow_id(self) -> str:
        return workflow_id_for(self.intent_id)

    def summary(self) -> str:
        return self.order.summary()


def workflow_id_for(intent_id: str) -> str:
    return f"intent-{intent_id}"


def client_order_id(intent_id: str, placement: int, exchange: str | None = None) -> str:
    """The deterministic client order id of an intent's `placement`-th exchange order.

    A hash keeps it inside Binance's 36 characters and its alphabet whatever the intent id is;
    `ek-` marks the orders that exchange-kernel placed. With `exchange` (a ccxt id), the id
    follows that exchange's rules (`exchange_kernel.client_ids`); for binance it is the same.
    """
    if exchange is not None:
        from exchange_kernel.client_ids import client_order_id_for

        return client_order_id_for(exchange, intent_id, placement)
    digest = hashlib.blake2b(intent_id.encode(), digest_size=8).hexdigest()
    return f"{CLIENT_ORDER_ID_PREFIX}-{digest}-{placement}"


def intent_digest(intent_id: str) -> str:
    """The part of every client order id that names the intent."""
    return client_order_id(intent_id, 0).split("-")[1]


class IntentChange(Value):
    """A modification of a resting intent: a new price, total amount and/or stop price."""

    price: Money | None = None
    amount: Money | None = None
    stop_price: Money | None = None

    @field_validator("price")
    @classmethod
    def _price(cls, value: Decimal | None) -> Decimal | None:
        return _check_quantity(value, "price")

    @field_validator("amount")
    @classmethod
    def _amount(cls, value: Decimal | None) -> Decimal | None:
        return _check_quantity(value, "amount")

    @field_validator("stop_price")
    @classmethod
    def _stop_price(cls, value: Decimal | None) -> Decimal | None:
        return _check_quantity(value, "stop_price")

    @model_validator(mode="after")
    def _something(self) -> Self:
        if self.price is None and self.amount is None and self.stop_price is None:
            raise ValueError("a change needs a price or an amount (or a stop_price)")
        return self


class Fill(Value):
    """One trade of one of the intent's exchange orders."""

    trade_id: str
    exchange_order_id: str
    client_order_id: str | None = None
    price: Money
    amount: Money
    fee: Money = Decimal(0)
    fee_currency: str | None = None
    timestamp: datetime | None = None  # the exchange's time of the trade
    # When the intent first learnt of this trade (its workflow's clock); None in observations
    # that have not reached an intent yet.
    known_at: datetime | None = None


class ExchangeOrder(Value):
    """An exchange order as last observed (never as assumed)."""

    exchange_order_id: str
    client_order_id: str
    symbol: str
    side: Side
    type: str
    status: ExchangeOrderStatus
    price: Money | None = None
    stop_price: Money | None = None
    amount: Money
    filled: Money = Decimal(0)
    average_price: Money | None = None
    fee: Money = Decimal(0)
    fee_currency: str | None = None
    fills: tuple[Fill, ...] = ()
    updated_at: datetime | None = None

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.filled


class MarketRules(Value):
    """The exchange's rules for one symbol, as the exchange states them."""

    symbol: str
    tick_size: Money | None = None
    step_size: Money | None = None
    min_amount: Money | None = None
    max_amount: Money | None = None
    min_price: Money | None = None
    max_price: Money | None = None
    min_notional: Money | None = None
    max_notional: Money | None = None
    native_amend: bool = False
    # The account's own pre-trade limits (accounts file), not the exchange's.
    account_max_notional: Money | None = None
    # max_open_notional_per_symbol for this symbol: the activities enforce it (only the
    # exchange knows the other open orders); the workflow reads it to know a check is due.
    account_max_open_notional: Money | None = None
    # The account's ccxt exchange id: client order ids follow its rules (`client_ids`). None in
    # histories recorded before the field existed: those intents keep the kernel's own form.
    exchange: str | None = None
    # Stop types the workflow holds instead of the exchange: ccxt reports no such order for the
    # account's exchange, or the accounts file says `held_stops = true`. A held stop watches
    # the last price and is released as a plain market or limit order when it crosses.
    # Empty in histories recorded before the field existed: their stops stay exchange orders.
    held_stops: tuple[OrderType, ...] = ()

    def holds(self, order_type: OrderType) -> bool:
        return order_type in self.held_stops

    def violations(self, spec: OrderSpec, amount: Decimal | None = None) -> list[str]:
        """Rules `spec` breaks (with `amount` instead of its own, if given); empty when valid."""
        amount = spec.amount if amount is None else amount
        broken: list[str] = []
        if self.step_size and amount % self.step_size != 0:
            broken.append(f"amount {amount} is not a multiple of the step size {self.step_size}")
        if self.min_amount and amount < self.min_amount:
            broken.append(f"amount {amount} is below the minimum amount {self.min_amount}")
        if self.max_amount and amount > self.max_amount:
            broken.append(f"amount {amount} is above the maximum amount {self.max_amount}")
        for name, price in (("price", spec.price), ("stop_price", spec.stop_price)):
            if price is None:
                continue
            if self.tick_size and price % self.tick_size != 0:
                broken.append(f"{name} {price} is not a multiple of the tick size {self.tick_size}")
            if self.min_price and price < self.min_price:
                broken.append(f"{name} {price} is below the minimum price {self.min_price}")
            if self.max_price and price > self.max_price:
                broken.append(f"{name} {price} is above the maximum price {self.max_price}")
        if spec.price is not None:
            notional = amount * spec.price
            # Each bound on its own: a market without a minimum still has the account's limit.
            if self.min_notional and notional < self.min_notional:
                broken.append(
                    f"notional {notional} (amount x price) is below the minimum notional "
                    f"{self.min_notional}"
                )
            whole = spec.amount * spec.price
            if self.account_max_notional and whole > self.account_max_notional:
                broken.append(
                    f"notional {whole} is above the account's pre-trade limit "
                    f"max_notional_per_intent = {self.account_max_notional}"
                )
            if self.max_notional and notional > self.max_notional:
                broken.append(
                    f"notional {notional} (amount x price) is above the maximum notional "
                    f"{self.max_notional}"
                )
        return broken


class ActionRecord(Value):
    """One step the kernel took (or decided), with why."""

    at: datetime
    action: str
    reason: str


class PlacementPhase(StrEnum):
    """Where one exchange order of an intent stands. Only `reconcile.advance` moves a placement
    from one phase to another, by the transition table `reconcile.TRANSITIONS`; an ended
    placement never becomes live again (a late observation cannot undo a fill)."""

    PLACING = "placing"  # create sent, no answer yet: outcome unknown until a lookup
    OPEN = "open"  # observed open on the exchange
    CANCELING = "canceling"  # cancel sent; not yet observed ended
    NOT_FOUND = "not_found"  # a lookup found no such order: it never reached the exchange
    NOT_SENT = "not_sent"  # the request was never sent (an edit given up before it): nothing exists
    REFUSED = "refused"  # the exchange refused the request: nothing was created
    FILLED = "filled"  # observed fully filled
    CANCELED = "canceled"  # observed cancelled, at the kernel's request
    CANCELED_ELSEWHERE = "canceled_elsewhere"  # observed cancelled, not at the kernel's request
    EXPIRED = "expired"  # observed expired (IOC/FOK/market remainder, exchange expiry)
    REJECTED = "rejected"  # observed rejected by the exchange

    @property
    def is_live(self) -> bool:
        """Possibly working on the exchange."""
        return self in LIVE_PHASES

    @property
    def is_final(self) -> bool:
        """Ended for good: no observation can change it any more."""
        return self not in LIVE_PHASES and self is not PlacementPhase.NOT_FOUND

    @property
    def is_observed(self) -> bool:
        """The exchange has shown this order (the placement carries its last observation)."""
        return self not in UNOBSERVED_PHASES


LIVE_PHASES = frozenset({PlacementPhase.PLACING, PlacementPhase.OPEN, PlacementPhase.CANCELING})
UNOBSERVED_PHASES = frozenset(
    {
        PlacementPhase.PLACING,
        PlacementPhase.NOT_FOUND,
        PlacementPhase.NOT_SENT,
        PlacementPhase.REFUSED,
    }
)


class Placement(Value):
    """One exchange order the intent placed (or tried to): its client order id and what we know.

    `phase` PLACING is NautilusTrader's third state: a request was sent, no answer came back, and
    nothing may be assumed until a lookup resolves it. `order` is the last observation (without
    its trades: those are merged, deduplicated by trade id, into `fills`); `observed_at` is when
    the exchange last told the kernel anything about this order.
    """

    number: int
    client_order_id: str
    revision: int
    price: Money | None = None
    stop_price: Money | None = None
    amount: Money
    phase: PlacementPhase = PlacementPhase.PLACING
    order: ExchangeOrder | None = None
    fills: tuple[Fill, ...] = ()
    observed_at: datetime | None = None
    refusal: str | None = None  # the exchange's reason, in phase REFUSED
    # When the request that created it gave up unanswered: it is looked up a grace later
    # (`reconcile.VISIBILITY_GRACE`), as exchanges' reads lag their writes.
    unanswered_at: datetime | None = None
    # The intent's desired order when this was placed (its revision's spec).
    spec: OrderSpec | None = None

    @model_validator(mode="after")
    def _phase_matches(self) -> Self:
        if self.phase.is_observed != (self.order is not None):
            raise ValueError(
                f"placement {self.number}: phase {self.phase.value} "
                f"{'needs' if self.phase.is_observed else 'cannot have'} an observed order"
            )
        if (self.phase is PlacementPhase.REFUSED) != (self.refusal is not None):
            raise ValueError(f"placement {self.number}: a refusal reason goes with phase refused")
        return self

    @property
    def live(self) -> bool:
        return self.phase.is_live

    @property
    def filled(self) -> Decimal:
        return self.order.filled if self.order else Decimal(0)

    @property
    def cost(self) -> Decimal:
        """Filled x average price (the placement's price when the exchange gave no average)."""
        if self.order is None or not self.order.filled:
            return Decimal(0)
        return self.order.filled * (self.order.average_price or self.price or Decimal(0))


class Settled(Value):
    """Totals of the intent's placements that ended long enough ago to be compacted: their
    observations and trades are no longer kept one by one (bounded state, `reconcile.compact`)."""

    placements: int = 0
    filled: Money = Decimal(0)
    cost: Money = Decimal(0)
    fees: dict[str, Money] = Field(default_factory=dict)
    exchange_order_ids: tuple[str, ...] = ()  # the most recent few, for visibility


class PendingChange(Value):
    """A change that lowers the amount, waiting to be judged on final fills (`reconcile`)."""

    number: int
    change: IntentChange
    at: datetime
    answered: bool = False  # an update waits for the judgment (a signal does not)


class Judgment(Value):
    """How a pending change was judged: applied (rejection None) or refused, with why."""

    number: int
    rejection: str | None = None
    revision: int


class Refusal(Value):
    """The exchange refused the order a revision needed (insufficient funds, post-only would
    cross, a filter): `reverted_to` is the revision the intent went back to, if it did."""

    revision: int
    reason: str
    reverted_to: int | None = None


class IntentEventKind(StrEnum):
    """What changed in an intent, as its workflow recorded it (`events.derive`)."""

    FILL = "fill"  # a trade of one of its exchange orders, new to the intent
    STATUS = "status"  # its status moved (pending, open, partially_filled, filled, ...)
    MODIFICATION_ACCEPTED = "modification_accepted"  # a change made a new revision
    # A change refused: by the kernel (it can no longer apply) or by the exchange (its order
    # was refused; the intent went back to its last accepted revision, `reverted_to`)
    MODIFICATION_REFUSED = "modification_refused"
    CANCEL_REQUESTED = "cancel_requested"  # a cancellation (or the expiry) was asked for


class IntentEvent(Value):
    """One change of an intent, numbered by `seq` (1, 2, ... across continue-as-new: a watcher
    dedupes by (intent_id, seq)). `status` and `filled` are the intent's after the event; the
    other fields belong to one kind each."""

    seq: int
    at: datetime
    intent_id: str
    kind: IntentEventKind
    status: IntentStatus
    filled: Money
    fill: Fill | None = None  # fill: the trade
    previous_status: IntentStatus | None = None  # status: what it was before
    # status: the outcome or the cancellation's reason; modification_refused: why;
    # cancel_requested: the reason given
    reason: str | None = None
    # modification_accepted: the new revision; modification_refused: the refused one (None
    # for a change refused before it made one)
    revision: int | None = None
    # modification_accepted: the desired order from now on; modification_refused with
    # `reverted_to`: the accepted order the intent went back to
    desired: OrderSpec | None = None
    reverted_to: int | None = None

    @model_serializer(mode="wrap")
    def _without_unset_fields(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # The fields of other kinds are left out: the state carries up to KEEP_EVENTS of these.
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class IntentState(Value):
    """Everything known about one intent: desired, observed, and every input of a decision.

    `reconcile.plan(state, now)` decides from this alone, so a run continued as new (which
    carries only the state) decides exactly as the run before it would have.
    """

    intent: OrderIntent
    desired: OrderSpec
    revision: int = 0
    # The intent's exchange orders, recent ones one by one; older ended ones are in `settled`.
    placements: tuple[Placement, ...] = ()
    next_placement: int = 0  # placements ever made: client order ids are never reused
    settled: Settled = Settled()
    status: IntentStatus = IntentStatus.PENDING
    reconciliation_status: ReconciliationStatus = ReconciliationStatus.RECONCILING
    rules: MarketRules | None = None
    # Loading the market rules failed: refused by the exchange (rejected) or unanswered (failed).
    rules_failure: str | None = None
    rules_refused: bool = False
    cancel_reason: str | None = None
    expiring: bool = False
    halted: str | None = None  # the account's kill switch is on (reason)
    outcome_reason: str | None = None
    # Changes lowering the amount, judged once no order is live (their fills are final).
    pending_changes: tuple[PendingChange, ...] = ()
    changes_received: int = 0
    judgments: tuple[Judgment, ...] = ()  # the most recent few, for waiting updates
    # The desired order of the newest revision the exchange accepted an order for: what the
    # intent goes back to when a later revision's order is refused.
    accepted: OrderSpec | None = None
    accepted_revision: int | None = None
    refusals: tuple[Refusal, ...] = ()  # the most recent few, for waiting updates
    # Consecutive exchange calls that ended unanswered; at MAX_UNANSWERED_CALLS it gives up.
    unanswered: int = 0
    last_error: str | None = None
    # A resync asked for at this time: the live order is looked up unless observed since.
    resync_at: datetime | None = None
    # `exchange-kernel repair` reset the run: every placement looks its id up before creating.
    repaired: bool = False
    # Registered with the account sync, which pushes changes of the intent's orders.
    watched: bool = False
    watch_refused: bool = False
    # The account sync has completed no round since this time (its view lapsed): stale.
    watch_lapsed_since: datetime | None = None
    poll_interval: timedelta = timedelta(seconds=1)
    # What was last reported to the intent's group, or None.
    group_reported: MemberUpdate | None = None
    # A held stop's release by its group (`OrderIntent.release_by_group`).
    released: bool = False
    group_missing: bool = False
    last_sync_at: datetime | None = None  # the last observation of any of its orders
    recent_actions: tuple[ActionRecord, ...] = ()
    # A held stop: the last price that the workflow saw cross it, and when (its trigger).
    last_price: Money | None = None
    last_price_at: datetime | None = None
    # The most recent changes (`events.KEEP_EVENTS`), for watchers (the `changes` update), and
    # the seq of the last one ever recorded (older ones were dropped from the tail).
    events: tuple[IntentEvent, ...] = ()
    event_seq: int = 0

    @property
    def holds_stop(self) -> bool:
        """The intent is a stop that the workflow holds instead of the exchange."""
        if self.intent.hold_stop and self.desired.type.is_stop:
            return True
        return self.rules is not None and self.rules.holds(self.desired.type)

    @property
    def stop_held(self) -> bool:
        """A held stop that has not triggered yet: nothing is on the exchange, the workflow
        watches the last price and releases the order when it crosses the stop price."""
        return self.holds_stop and not self.next_placement and not self.status.is_terminal

    @property
    def filled(self) -> Decimal:
        return self.settled.filled + sum((p.filled for p in self.placements), Decimal(0))

    @property
    def remaining(self) -> Decimal:
        return max(self.desired.amount - self.filled, Decimal(0))

    @property
    def average_price(self) -> Decimal | None:
        filled = self.filled
        if not filled:
            return None
        cost = self.settled.cost + sum((p.cost for p in self.placements), Decimal(0))
        return cost / filled

    @property
    def fills(self) -> tuple[Fill, ...]:
        """The trades of the placements kept one by one (compacted ones are in `settled`)."""
        return tuple(fill for p in self.placements for fill in p.fills)

    @property
    def fees(self) -> dict[str, Decimal]:
        totals: dict[str, Decimal] = dict(self.settled.fees)
        for fill in self.fills:
            if fill.fee and fill.fee_currency:
                totals[fill.fee_currency] = totals.get(fill.fee_currency, Decimal(0)) + fill.fee
        return totals

    @property
    def live_placement(self) -> Placement | None:
        live = [p for p in self.placements if p.live]
        return live[-1] if live else None

    def placement(self, number: int) -> Placement:
        for placement in self.placements:
            if placement.number == number:
                return placement
        raise KeyError(f"placement {number} of {self.intent.intent_id} is not kept")

    @property
    def exchange_order_ids(self) -> list[str]:
        kept = [
            p.order.exchange_order_id
            for p in self.placements
            if p.order and p.order.exchange_order_id
        ]
        return [*self.settled.exchange_order_ids, *kept]

    def report(self) -> dict[str, object]:
        """Every field, including the derived ones, as JSON-ready data (for `status --json`)."""
        data = self.model_dump(mode="json")
        data["filled"] = str(self.filled)
        data["remaining"] = str(self.remaining)
        average = self.average_price
        data["average_price"] = None if average is None else str(average)
        data["fees"] = {k: str(v) for k, v in self.fees.items()}
        data["stop_held"] = self.stop_held
        return data

    def brief(self) -> IntentBrief:
        average = self.average_price
        return IntentBrief(
            intent_id=self.intent.intent_id,
            status=self.status,
            reconciliation_status=self.reconciliation_status,
            revision=self.revision,
            desired=self.desired,
            filled=self.filled,
            remaining=self.remaining,
            average_price=average,
            pending_changes=len(self.pending_changes),
        )


class IntentBrief(Value):
    """What an update answers with: the intent in a few fields (the whole state is the query's)."""

    intent_id: str
    status: IntentStatus
    reconciliation_status: ReconciliationStatus
    revision: int
    desired: OrderSpec
    filled: Money
    remaining: Money
    average_price: Money | None = None
    pending_changes: int = 0


class IntentEvents(Value):
    """What the `changes` update answers: the kept events after the asked seq, oldest first.

    `gap`: events after the asked seq were dropped from the intent's tail before this read
    (or the asked seq is past the last one, after a reset): read the state for what they
    said. `finished`: the intent has ended, no event follows `last_seq`."""

    intent_id: str
    events: tuple[IntentEvent, ...] = ()
    last_seq: int = 0
    gap: bool = False
    finished: bool = False


# --- activity messages: what the workflow asks the exchange activities -----------------------


class OrderRequest(Value):
    """Everything needed to place one exchange order; names an account, never a credential."""

    account: str
    symbol: str
    side: Side
    type: OrderType
    client_order_id: str
    amount: Money
    price: Money | None = None
    stop_price: Money | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    post_only: bool = False
    reduce_only: bool = False
    may_exist: bool = False
    # Remaining x price of the intent's order that this one replaces (0: it replaces none).
    # The open-notional limit refuses only placements that add to it (limits.replaced_notional).
    replaced_notional: Money = Decimal(0)


class AmendRequest(Value):
    """Replace `replaces_*` by `order` with the exchange's native edit."""

    account: str
    replaces_client_order_id: str
    replaces_exchange_order_id: str
    replaces_filled: Money = Decimal(0)
    order: OrderRequest


class AmendResult(Value):
    """The new order and the replaced one's final state, each None if the exchange lacks it."""

    replaced: ExchangeOrder | None
    order: ExchangeOrder | None


class OrderLookup(Value):
    account: str
    symbol: str
    client_order_id: str
    known_filled: Money = Decimal(0)


class MarketRequest(Value):
    account: str
    symbol: str


class PriceWatch(Value):
    """Watch `symbol`'s last price until it crosses a held stop's `stop_price`: a sell stop
    triggers when the last price is at or below it, a buy stop at or above."""

    account: str
    symbol: str
    side: Side
    stop_price: Money


class PriceSeen(Value):
    """A last price that crossed the stop, as the exchange's ticker gave it."""

    price: Money
    at: datetime | None = None


class OpenNotionalRequest(Value):
    """Would the account's open notional on `symbol` stay within its limit with `notional`
    added? Its own orders `exclude` are not counted (the order a modification replaces)."""

    account: str
    symbol: str
    notional: Money
    exclude: tuple[str, ...] = ()


class IntentStart(Value):
    """The workflow's input: the intent, and on continue-as-new the state carried over."""

    intent: OrderIntent
    state: IntentState | None = None
    # A run continues as new past this many history events (sooner if Temporal suggests it),
    # so no run's history grows past a few thousand events however long the intent lives.
    max_run_events: int = Field(default=1000, ge=10)


class IntentSignal(Value):
    """A signal for every running intent of an account (of one symbol, if given)."""

    account: str
    symbol: str | None = None
    signal: str
    arg: str | None = None


class HaltRequest(Value):
    """The kill switch: refuse new risk on an account (or one symbol of it)."""

    symbol: str | None = None
    cancel_all: bool = False
    reason: str = "halted"


def halt_scope(symbol: str | None) -> str:
    return symbol or "*"


def account_sync_id(account: str) -> str:
    return f"account-sync-{account}"


def group_workflow_id(group_id: str) -> str:
    return f"group-{group_id}"


class WatchRequest(Value):
    """An intent asking its account's sync to observe its orders on `symbol`.

    `exchange` and `placement` say how the intent's client order ids are spelled (its
    `MarketRules.exchange`; None: the kernel's form) and which placement is live: the sync needs
    both to recognise ids of an opaque form (UUID, 128-bit hex), which carry no readable digest.
    Watch signals recorded before these fields existed decode with the kernel's form."""

    intent_id: str
    symbol: str
    exchange: str | None = None
    placement: int = 0


class SyncRequest(Value):
    """One round of bulk observation of an account."""

    account: str
    symbols: tuple[str, ...]
    round: int
    # Per symbol, the last trade id already seen: trades after it are fills to report.
    trade_cursor: dict[str, str] = Field(default_factory=dict)
    # Intents registered since the last round, by `client_ids.key_of` (the intent digest; for
    # an opaque form, the live client order id): their orders may have changed between their
    # own last look and this round, outside any snapshot.
    new_digests: tuple[str, ...] = ()
    # Of those, the symbol each watches: a key whose symbol could not be read this round is
    # not reported `not_open` (absent from it: reported as before).
    new_symbols: dict[str, str] = Field(default_factory=dict)


class StreamRequest(Value):
    """The account's user-data stream, followed for its sync workflow (which it tells of every
    (re)connect, and asks which intent owns an order)."""

    account: str
    sync_workflow_id: str


class ScanRequest(Value):
    account: str
    symbols: tuple[str, ...]


class Orphan(Value):
    """An open exchange order that no running intent owns."""

    order: ExchangeOrder
    # "kernel": our client order id form (a readable one, or an opaque one an intent claims),
    # no running intent; "manual": anything else (placed by hand, or unclaimed opaque ids)
    kind: str
    intent_id: str | None = None  # the finished intent it belonged to, when visibility knows


class SyncResult(Value):
    changed: tuple[ExchangeOrder, ...] = ()
    not_open: tuple[str, ...] = ()  # of the new digests (keys), those with no open order
    trade_cursor: dict[str, str] = Field(default_factory=dict)
    # Only when the activity had no snapshot of the previous round (a new or restarted
    # worker): every open client order id, so the workflow can resync what it cannot diff.
    open_client_order_ids: tuple[str, ...] | None = None
    # The task queue of the worker process that served the round and now holds its snapshot
    # (`connection.worker_sync_queue`): the workflow schedules the next round there. None: a
    # worker that has none (e.g. older): the next round goes to the account's queue.
    worker_queue: str | None = None
    # Symbols of which some part could not be read this round (its open orders, its new
    # trades, a lookup): what was read of the others counts, these are retried soon. Their
    # marks and cursors stay where they were, so nothing they hold is lost.
    failed_symbols: tuple[str, ...] = ()
    failures: tuple[str, ...] = ()  # what failed, one line each (for the workflow's status)


# --- contingent orders ---------------------------------------------------------------------


class GroupKind(StrEnum):
    OCO = "oco"  # one fills, the others are cancelled
    BRACKET = "bracket"  # an entry; its fills protected by a take-profit / stop-loss OCO pair


class OcoTrigger(StrEnum):
    FIRST_FILL = "first_fill"  # any fill of any size triggers (default)
    FULL_FILL = "full_fill"  # only a member filled completely triggers


class IntentGroup(Value):
    """Intents whose fate is linked. Every member is an ordinary intent as well."""

    group_id: Identifier
    account: Identifier
    kind: GroupKind
    strategy_id: Identifier | None = None
    # OCO
    members: tuple[OrderIntent, ...] = ()
    trigger: OcoTrigger = OcoTrigger.FIRST_FILL
    # bracket
    entry: OrderSpec | None = None
    take_profit: Money | None = None
    stop_loss: Money | None = None
    stop_loss_limit: Money | None = None
    # The stop-loss as a stop-market order (released as a market order) instead of stop-limit.
    stop_loss_market: bool = False

    @model_validator(mode="after")
    def _shape(self) -> Self:
        if self.kind is GroupKind.OCO:
            if len(self.members) < 2:
                raise ValueError("members: an OCO group needs at least two intents")
            for member in self.members:
                if member.account != self.account:
                    raise ValueError(f"members: {member.intent_id} is on another account")
                if member.group_id not in (None, self.group_id):
                    raise ValueError(f"members: {member.intent_id} names another group")
            ids = [m.intent_id for m in self.members]
            if len(set(ids)) != len(ids):
                raise ValueError("members: intent ids must be distinct")
            return self
        if self.entry is None or self.take_profit is None or self.stop_loss is None:
            raise ValueError("a bracket needs entry, take_profit and stop_loss")
        if self.stop_loss_market and self.stop_loss_limit is not None:
            raise ValueError("stop_loss_limit: a market stop-loss (stop_loss_market) has no limit")
        reference = self.entry.price
        if self.entry.side is Side.BUY:
            if not self.stop_loss < self.take_profit:
                raise ValueError("stop_loss must be below take_profit for a buy entry")
            if reference is not None and not self.stop_loss < reference < self.take_profit:
                raise ValueError("a buy entry's price must lie between stop_loss and take_profit")
        else:
            if not self.take_profit < self.stop_loss:
                raise ValueError("take_profit must be below stop_loss for a sell entry")
            if reference is not None and not self.take_profit < reference < self.stop_loss:
                raise ValueError("a sell entry's price must lie between take_profit and stop_loss")
        return self

    def member_intents(self) -> tuple[OrderIntent, ...]:
        """OCO: the members, each tagged with the group id."""
        return tuple(
            m if m.group_id == self.group_id else m.model_copy(update={"group_id": self.group_id})
            for m in self.members
        )

    def leg_id(self, leg: str) -> str:
        return f"{self.group_id}.{leg}"

    def bracket_intent(self, leg: str, amount: Decimal, held_stop: bool = False) -> OrderIntent:
        """The entry, take-profit or stop-loss leg of a bracket as an intent. `held_stop`: the
        stop-loss is held by its workflow and placed only on its group's release (on spot, the
        take-profit resting on the exchange locks the whole position: a second order selling
        it would be refused)."""
        assert self.entry is not None
        if leg == "entry":
            spec = self.entry
        else:
            exit_side = Side.SELL if self.entry.side is Side.BUY else Side.BUY
            price: Decimal | None
            if leg == "take_profit":
                order_type, price, stop_price = OrderType.LIMIT, self.take_profit, None
            elif self.stop_loss_market:
                order_type, price, stop_price = OrderType.STOP_MARKET, None, self.stop_loss
            else:
                order_type, stop_price = OrderType.STOP_LIMIT, self.stop_loss
                price = self.stop_loss_limit or self.stop_loss
            spec = OrderSpec(
                symbol=self.entry.symbol,
                side=exit_side,
                type=order_type,
                amount=amount,
                price=price,
                stop_price=stop_price,
            )
        return OrderIntent(
            intent_id=self.leg_id(leg),
            account=self.account,
            order=spec,
            group_id=self.group_id,
            strategy_id=self.strategy_id,
            hold_stop=held_stop and leg == "stop_loss",
            release_by_group=held_stop and leg == "stop_loss",
        )


class MemberUpdate(Value):
    """A group member reporting its progress to its group: how much it has filled in all, and
    where it stands. Reports may arrive late or twice; `group_plan.record_report` keeps the
    newest."""

    intent_id: str
    filled: Money
    status: IntentStatus
    # A held stop that has triggered and waits for the group's release (`release_by_group`).
    triggered: bool = False
    # Fees paid so far, by currency (a spot buy may pay in the base asset: exits sized net).
    fees: dict[str, Money] = Field(default_factory=dict)


class GroupState(Value):
    """A group's whole state: every input of `group_plan.plan_group`, so a continue-as-new (or a
    reset) carries the group's memory of what it did, not only what it heard."""

    group: IntentGroup
    # The members' newest reports, by intent id (reports of intents that are not members of
    # the group are not kept).
    members: dict[str, MemberUpdate] = Field(default_factory=dict)
    # Members the group started (asked Temporal to start), in that order; a member is started
    # at most once. Those whose start was refused (an intent with that id existed already),
    # with the reason: such a member is the group's only once it reports to the group.
    started: tuple[str, ...] = ()
    start_refused: dict[str, str] = Field(default_factory=dict)
    # Members the group sent a cancel (a signal: sent once, the member's reports tell the rest).
    cancels_sent: tuple[str, ...] = ()
    # Bracket: the amount each exit leg was last sized to, by its start or a modify.
    sized: dict[str, Money] = Field(default_factory=dict)
    # OCO: the member whose fill triggered the cancellation of the others.
    triggered_by: str | None = None
    cancel_reason: str | None = None
    finished: bool = False
    # Fills that landed on legs that should have been cancelled: reported, never hidden.
    overfill: dict[str, Money] = Field(default_factory=dict)
    notes: tuple[str, ...] = ()
    # Bracket: the stop-loss is held by its workflow and released by the group once the
    # take-profit is cancelled, and the exits are sized net of the entry's fee to the market's
    # step size. Set by the workflow for every bracket it starts; False (both exits resting on
    # the exchange, sized to the entry's filled amount) is only the planner's plain mode.
    held_stop_loss: bool = False
    # Bracket with a held stop-loss: the market's rules (the step size exits are rounded down
    # to, the minimums a first exit must meet), or why they could not be loaded (then the exits
    # are sized unrounded and the members' own checks judge them).
    rules: MarketRules | None = None
    rules_failure: str | None = None
    # Held stops (triggered, waiting for the group) the group released, in that order.
    released: tuple[str, ...] = ()
