"""ccxt exceptions mapped onto Temporal's retry policy.

The network family (timeouts, 5xx, rate limits, clock skew) is worth retrying; the exchange
family (bad order, no funds, bad key) will fail the same way every time, so it is surfaced at
once as a non-retryable ApplicationError whose `type` is the ccxt class name.
"""

from __future__ import annotations

from datetime import timedelta

import ccxt
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from exchange_kernel.accounts import AccountConfigError
from exchange_kernel.limits import PreTradeLimitExceeded

# The retry policy of every exchange activity: the network family backs off to 30 s between
# attempts; a 429's Retry-After overrides the next delay.
EXCHANGE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)
# Exchanges that answer 429 without Retry-After still need a pause longer than a tight retry.
DEFAULT_RATE_LIMIT_DELAY = timedelta(seconds=1)
MAX_RETRY_AFTER = timedelta(minutes=5)


def retry_after(headers: dict[str, str] | None) -> timedelta | None:
    """The delay a 429/418 response asked for, if it said."""
    if not headers:
        return None
    for name, value in headers.items():
        if name.lower() == "retry-after":
            try:
                seconds = float(value)
            except ValueError:
                return None
            return min(timedelta(seconds=max(seconds, 0)), MAX_RETRY_AFTER)
    return None


def to_application_error(exc: Exception, headers: dict[str, str] | None = None) -> ApplicationError:
    """The ApplicationError that tells Temporal whether and when to retry `exc`."""
    name = type(exc).__name__
    message = f"{name}: {exc}"
    if isinstance(exc, AccountConfigError):
        return ApplicationError(message, type="AccountConfigError", non_retryable=True)
    if isinstance(exc, PreTradeLimitExceeded):
        # The message is the intent's outcome reason as people read it: it names the limit.
        return ApplicationError(str(exc), type=name, non_retryable=True)
    if isinstance(exc, ccxt.DDoSProtection):  # RateLimitExceeded is a subclass
        delay = retry_after(headers) or DEFAULT_RATE_LIMIT_DELAY
        return ApplicationError(message, type=name, next_retry_delay=delay)
    if isinstance(exc, ccxt.NetworkError):
        return ApplicationError(message, type=name)
    if isinstance(exc, ccxt.ExchangeError):
        return ApplicationError(message, type=name, non_retryable=True)
    # Anything else (a bug, an unexpected payload) is retried: a fix and a redeploy heal it.
    return ApplicationError(message, type=name)
