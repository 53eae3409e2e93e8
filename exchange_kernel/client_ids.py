"""Client order ids that fit each exchange's length and character rules.

The kernel's own form is ``ek-<16 hex>-<placement>`` (``models.client_order_id``): 21 characters
and more, letters, digits and ``-``. Most exchanges take it as it is; the others get a form of
their own, derived just as deterministically from the intent id and the placement number, so a
retried placement always asks the exchange about the same id.

The table says, per ccxt exchange id, what the exchange accepts (``pattern``, the longest id)
and which form we send. Patterns are the exchange's documented rule or, where the documentation
is vague, a conservative subset of it (noted). An exchange that is not in the table gets
:data:`DEFAULT_RULE`: ``[A-Za-z0-9-]``, at most 32 characters, which the kernel's own form fits.

The workflow sends its account's form: the ``load_market`` activity reports the account's ccxt
exchange id in ``MarketRules.exchange`` and ``reconcile`` passes it to
``models.client_order_id``; None (rules recorded before that field existed) keeps the kernel's
form, so old histories replay with the ids they recorded. The second half of this module maps
ids back to intents, for every form.

This module must stay importable inside the Temporal workflow sandbox (``models`` imports it
from workflow code): the standard library only, nothing non-deterministic.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from enum import StrEnum

PREFIX = "ek"


class Form(StrEnum):
    """How an id is spelled for an exchange."""

    KERNEL = "kernel"  # ek-<16 hex>-<n>: the form models.client_order_id has always produced
    ALNUM = "alnum"  # ek<16 hex>n<n>: letters and digits only
    GATE = "gate"  # t-ek-<16 hex>-<n>: Gate wants user text to start with "t-"
    HEX128 = "hex128"  # 0x<32 hex>: a 128-bit hex string (Hyperliquid's cloid)
    UUID = "uuid"  # 8-4-4-4-12 hex: a UUID (Kraken's cl_ord_id, Coinbase's client_order_id)

    @property
    def readable(self) -> bool:
        """True when the id spells out the intent's digest and the placement number; False
        for the opaque forms (HEX128, UUID), which only a known intent can claim."""
        return self in (Form.KERNEL, Form.ALNUM, Form.GATE)


@dataclass(frozen=True)
class ClientIdRule:
    """What one exchange accepts as a client order id, and the form we send it."""

    pattern: str
    max_length: int
    form: Form = Form.KERNEL
    note: str = ""

    def accepts(self, client_id: str) -> bool:
        return (
            len(client_id) <= self.max_length and re.fullmatch(self.pattern, client_id) is not None
        )


_BINANCE = ClientIdRule(r"[.A-Z:/a-z0-9_-]{1,36}", 36, note="newClientOrderId, documented")
_DASH_UNDERSCORE_36 = r"[A-Za-z0-9_-]{1,36}"
_DASH_UNDERSCORE_40 = r"[A-Za-z0-9_-]{1,40}"
_UUID_PATTERN = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

#: ccxt exchange id -> rule. Every exchange that ccxt marks `certified` has an entry (a test
#: checks it against the installed ccxt), plus a few large ones with special forms.
RULES: dict[str, ClientIdRule] = {
    "binance": _BINANCE,
    "binanceusdm": _BINANCE,
    "binancecoinm": _BINANCE,
    "bingx": ClientIdRule(_DASH_UNDERSCORE_40, 40, note="clientOrderID, 1-40 characters"),
    "bitget": ClientIdRule(
        r"[A-Za-z0-9_-]{1,50}", 50, note="clientOid, 50 characters; alphabet conservative"
    ),
    "bybit": ClientIdRule(_DASH_UNDERSCORE_36, 36, note="orderLinkId, documented"),
    "cryptocom": ClientIdRule(
        _DASH_UNDERSCORE_36, 36, note="client_oid, 36 characters; alphabet conservative"
    ),
    # Gate: "t-" then at most 28 bytes of [0-9A-Za-z_.-]; ccxt refuses more than 28 characters
    # in all (prefix included) and adds "t-" itself only when the id does not start with "t".
    "gate": ClientIdRule(
        r"t-[0-9A-Za-z_.-]{1,26}", 28, Form.GATE, note="text: t- prefix; ccxt caps it at 28"
    ),
    "hashkey": ClientIdRule(
        _DASH_UNDERSCORE_36, 36, note="clientOrderId; undocumented limit, conservative"
    ),
    "hyperliquid": ClientIdRule(r"0x[0-9a-f]{32}", 34, Form.HEX128, note="cloid: 128-bit hex"),
    "kucoin": ClientIdRule(_DASH_UNDERSCORE_40, 40, note="clientOid, documented"),
    "kucoinfutures": ClientIdRule(_DASH_UNDERSCORE_40, 40, note="clientOid, documented"),
    "mexc": ClientIdRule(
        r"[A-Za-z0-9_-]{1,32}", 32, note="newClientOrderId; limit conservative (32)"
    ),
    "okx": ClientIdRule(r"[A-Za-z0-9]{1,32}", 32, Form.ALNUM, note="clOrdId: 1-32 alphanumerics"),
    "woofipro": ClientIdRule(
        r"[A-Za-z0-9-]{1,36}", 36, note="client_order_id, 36 characters; no underscore assumed"
    ),
    # Not certified, but their rules need a special form.
    "kraken": ClientIdRule(
        _UUID_PATTERN, 36, Form.UUID, note="cl_ord_id: UUID (free text is capped at 18)"
    ),
    "coinbase": ClientIdRule(_UUID_PATTERN, 36, Form.UUID, note="client_order_id: UUID"),
    "coinbaseexchange": ClientIdRule(_UUID_PATTERN, 36, Form.UUID, note="client_oid: UUID"),
    "htx": ClientIdRule(r"[A-Za-z0-9_-]{1,64}", 64, note="client-order-id, 64 characters"),
    "phemex": ClientIdRule(_DASH_UNDERSCORE_40, 40, note="clOrdID, 40 characters"),
}

#: For exchanges with no entry: an alphabet and length nearly every exchange accepts.
DEFAULT_RULE = ClientIdRule(r"[A-Za-z0-9-]{1,32}", 32, note="default for exchanges not listed")


def rule_for(exchange: str) -> ClientIdRule:
    return RULES.get(exchange, DEFAULT_RULE)


def intent_digest(intent_id: str) -> str:
    """16 hex characters naming the intent: the same digest as ``models.client_order_id``."""
    return hashlib.blake2b(intent_id.encode(), digest_size=8).hexdigest()


def _digest128(intent_id: str, placement: int) -> str:
    # The length prefix keeps ("a1", 2) and ("a", 12) apart.
    data = f"{len(intent_id)}:{intent_id}:{placement}".encode()
    return hashlib.blake2b(data, digest_size=16, person=b"ek-client-id").hexdigest()


def _uuid(hex32: str) -> str:
    """A version-4-shaped UUID from 32 hex digits (deterministic; no `uuid` call needed)."""
    value = int(hex32, 16)
    value &= ~(0xF000 << 64)
    value |= 0x4000 << 64  # version 4
    value &= ~(0xC000 << 48)
    value |= 0x8000 << 48  # RFC 4122 variant
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def client_order_id_for(exchange: str, intent_id: str, placement: int) -> str:
    """The client order id of an intent's `placement`-th order on `exchange`."""
    if placement < 0:
        raise ValueError(f"placement must be >= 0, got {placement}")
    rule = rule_for(exchange)
    digest = intent_digest(intent_id)
    match rule.form:
        case Form.KERNEL:
            client_id = f"{PREFIX}-{digest}-{placement}"
        case Form.ALNUM:
            client_id = f"{PREFIX}{digest}n{placement}"
        case Form.GATE:
            client_id = f"t-{PREFIX}-{digest}-{placement}"
        case Form.HEX128:
            client_id = "0x" + _digest128(intent_id, placement)
        case Form.UUID:
            client_id = _uuid(_digest128(intent_id, placement))
        case _:  # pragma: no cover - Form is closed
            raise AssertionError(rule.form)
    if not rule.accepts(client_id):
        raise ValueError(
            f"client order id {client_id!r} does not fit {exchange}'s rule "
            f"({rule.pattern}, at most {rule.max_length}): placement number too large"
        )
    return client_id


def id_for(intent_id: str, placement: int, exchange: str | None = None) -> str:
    """The id the workflow sends for an intent's `placement`-th order: `exchange`'s form, or the
    kernel's own form when the exchange is not known (`MarketRules.exchange` is None in
    histories recorded before the workflow knew it: their ids stay what they were)."""
    if exchange is None:
        if placement < 0:
            raise ValueError(f"placement must be >= 0, got {placement}")
        return f"{PREFIX}-{intent_digest(intent_id)}-{placement}"
    return client_order_id_for(exchange, intent_id, placement)


def form_of(exchange: str | None) -> Form:
    """The form `id_for` uses for `exchange` (None: the kernel's)."""
    return Form.KERNEL if exchange is None else rule_for(exchange).form


# --- from an id back to its intent -------------------------------------------------------------
#
# Readable forms (KERNEL, ALNUM, GATE) spell out the intent's digest and the placement number, so
# an id names its intent by itself, whatever exchange it is on. Opaque forms (HEX128, UUID) are a
# hash of both: they can only be recognised by an intent that claims them, i.e. by computing the
# intent's ids and comparing (`belongs_to`, `Owners`). On an exchange with an opaque form, any id
# of that shape may be ours: the account sync and the orphan scan treat it as foreign unless a
# known intent claims it.

_NUMBER = r"(0|[1-9][0-9]*)"
_READABLE: dict[Form, re.Pattern[str]] = {
    Form.KERNEL: re.compile(rf"{PREFIX}-([0-9a-f]{{16}})-{_NUMBER}"),
    Form.ALNUM: re.compile(rf"{PREFIX}([0-9a-f]{{16}})n{_NUMBER}"),
    Form.GATE: re.compile(rf"t-{PREFIX}-([0-9a-f]{{16}})-{_NUMBER}"),
}
_OPAQUE: dict[Form, re.Pattern[str]] = {
    Form.HEX128: re.compile(r"0x[0-9a-f]{32}"),
    # Our UUIDs carry the version-4 and RFC 4122 variant bits (`_uuid`).
    Form.UUID: re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
}


def parse(client_id: str) -> tuple[str, int] | None:
    """(intent digest, placement number) of an id in any readable form; None otherwise.

    Every readable form is recognised on every exchange: an intent keeps the form it started
    with (one recorded before the workflow knew its exchange uses the kernel's)."""
    for pattern in _READABLE.values():
        match = pattern.fullmatch(client_id)
        if match is not None:
            return match.group(1), int(match.group(2))
    return None


def is_opaque(client_id: str, exchange: str | None = None) -> bool:
    """Shaped like an opaque form (`exchange`'s, or with None any opaque form): it may be ours,
    and only an intent that claims it can tell."""
    if exchange is not None:
        pattern = _OPAQUE.get(form_of(exchange))
        return pattern is not None and pattern.fullmatch(client_id.lower()) is not None
    return any(p.fullmatch(client_id.lower()) for p in _OPAQUE.values())


def looks_ours(client_id: str, exchange: str | None = None) -> bool:
    """May the kernel have placed an order with this id on `exchange`? Readable forms say so by
    their prefix (exactly); for an opaque form this is only its shape (a UUID placed by someone
    else passes too), to be settled by matching it against known intents."""
    return parse(client_id) is not None or is_opaque(client_id, exchange)


def key_of(client_id: str) -> str:
    """What the account sync compares open orders by: the intent digest of a readable id, the
    (lower-cased) id itself otherwise. A digest (16 hex) never equals an opaque id."""
    parsed = parse(client_id)
    return parsed[0] if parsed is not None else client_id.lower()


def belongs_to(client_id: str, intent_id: str, placement: int, exchange: str | None = None) -> bool:
    """Is `client_id` the id of `intent_id`'s `placement`-th order on `exchange`? Works for every
    form: the id is computed and compared."""
    try:
        expected = id_for(intent_id, placement, exchange)
    except ValueError:
        return False
    return client_id == expected or (
        not form_of(exchange).readable and client_id.lower() == expected
    )


def placement_of(
    client_id: str, intent_id: str, exchange: str | None = None, *, up_to: int
) -> int | None:
    """The placement number under which `intent_id` sent `client_id` on `exchange`, or None if it
    is not one of the intent's ids. A readable id says its number; an opaque one is compared with
    the intent's ids of placements 0..`up_to`."""
    parsed = parse(client_id)
    if parsed is not None:
        number = parsed[1]
        return number if belongs_to(client_id, intent_id, number, exchange) else None
    if form_of(exchange).readable:
        return None
    for number in range(up_to + 1):
        if belongs_to(client_id, intent_id, number, exchange):
            return number
    return None


class Owners:
    """Which registered intent (and which of its placements) a client order id belongs to, for
    intents of every form. Pure and deterministic: the account sync workflow keeps one.

    A readable id names its intent by digest: one dictionary lookup. An opaque id names nothing,
    so for each registered intent of an opaque form the ids of placements 0 .. (highest known
    placement + `window`) are computed in advance, and the horizon moves up whenever one of its
    ids is seen. An intent that makes more than `window` placements without any of them being
    seen here is not recognised until it is registered again with its current placement.
    """

    def __init__(self, window: int = 32) -> None:
        self.window = window
        self._by_digest: dict[str, str] = {}
        self._by_id: dict[str, tuple[str, int]] = {}  # opaque ids only
        self._exchange: dict[str, str | None] = {}
        self._placement: dict[str, int] = {}  # the highest placement known, per intent
        self._indexed: dict[str, int] = {}  # opaque intents: ids computed for 0.._indexed

    def __contains__(self, intent_id: object) -> bool:
        return intent_id in self._exchange

    def exchange(self, intent_id: str) -> str | None:
        return self._exchange.get(intent_id)

    def placement(self, intent_id: str) -> int:
        return self._placement.get(intent_id, 0)

    def add(self, intent_id: str, exchange: str | None = None, placement: int = 0) -> None:
        """Register an intent (again): its exchange (None: the kernel's form) and the number of a
        placement it has made (its live one)."""
        if intent_id in self._exchange and self._exchange[intent_id] != exchange:
            self.discard(intent_id)
        self._exchange[intent_id] = exchange
        self._by_digest[intent_digest(intent_id)] = intent_id
        self._seen(intent_id, max(placement, self._placement.get(intent_id, 0)))

    def discard(self, intent_id: str) -> None:
        if intent_id not in self._exchange:
            return
        exchange = self._exchange.pop(intent_id)
        self._by_digest.pop(intent_digest(intent_id), None)
        self._placement.pop(intent_id, None)
        indexed = self._indexed.pop(intent_id, -1)
        for number in range(indexed + 1):
            self._by_id.pop(id_for(intent_id, number, exchange), None)

    def owner(self, client_id: str) -> tuple[str, int] | None:
        """(intent id, placement number) of the registered intent that sent `client_id`; the
        id counts as seen (an opaque intent's horizon moves up)."""
        hit = self.lookup(client_id)
        if hit is not None:
            self._seen(*hit)
        return hit

    def lookup(self, client_id: str) -> tuple[str, int] | None:
        """As `owner`, changing nothing: for a workflow query, which must not alter state."""
        parsed = parse(client_id)
        if parsed is not None:
            digest, number = parsed
            intent_id = self._by_digest.get(digest)
            return None if intent_id is None else (intent_id, number)
        return self._by_id.get(client_id.lower())

    def key(self, intent_id: str) -> str:
        """The `key_of` an open order of this intent has (for an opaque intent: its id of the
        highest known placement)."""
        exchange = self._exchange.get(intent_id)
        if form_of(exchange).readable:
            return intent_digest(intent_id)
        return id_for(intent_id, self.placement(intent_id), exchange)

    def owner_of_key(self, key: str) -> str | None:
        intent_id = self._by_digest.get(key)
        if intent_id is not None:
            return intent_id
        hit = self._by_id.get(key)
        return hit[0] if hit is not None else None

    def _seen(self, intent_id: str, number: int) -> None:
        if intent_id not in self._exchange:
            return
        self._placement[intent_id] = max(number, self._placement.get(intent_id, 0))
        exchange = self._exchange[intent_id]
        if form_of(exchange).readable:
            return
        want = self._placement[intent_id] + self.window
        start = self._indexed.get(intent_id, -1) + 1
        for n in range(start, want + 1):
            self._by_id[id_for(intent_id, n, exchange)] = (intent_id, n)
        self._indexed[intent_id] = max(want, start - 1)
