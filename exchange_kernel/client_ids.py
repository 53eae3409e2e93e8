"""Client order ids that fit each exchange's length and character rules.

The kernel's own form is ``ek-<16 hex>-<placement>`` (``models.client_order_id``): 21 characters
and more, letters, digits and ``-``. Most exchanges take it as it is; the others get a form of
their own, derived just as deterministically from the intent id and the placement number, so a
retried placement always asks the exchange about the same id.

The table says, per ccxt exchange id, what the exchange accepts (``pattern``, the longest id)
and which form we send. Patterns are the exchange's documented rule or, where the documentation
is vague, a conservative subset of it (noted). An exchange that is not in the table gets
:data:`DEFAULT_RULE`: ``[A-Za-z0-9-]``, at most 32 characters, which the kernel's own form fits.

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
