"""All retry policies in one place (tenacity): what counts as transient, how long to back off, when to stop."""

from __future__ import annotations

import logging
from typing import Callable

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_exponential_jitter,
)

from core.errors import TransientError

log = logging.getLogger("s2v.retry")

# Backends register predicates that recognise their own transient errors (botocore, google.api_core, …)
# so this module never imports their heavy libraries.
_TRANSIENT_PREDICATES: list[Callable[[BaseException], bool]] = []


def register_transient(pred: Callable[[BaseException], bool]) -> None:
    if pred not in _TRANSIENT_PREDICATES:
        _TRANSIENT_PREDICATES.append(pred)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(p(exc) for p in _TRANSIENT_PREDICATES)


# name → (attempts, max total seconds, initial wait, max wait)
POLICIES: dict[str, tuple[int, float, float, float]] = {
    "storage": (8, 120.0, 0.2, 10.0),
    "ffmpeg": (3, 60.0, 0.5, 4.0),
    "webhook": (5, 60.0, 0.5, 10.0),
    "cloud_api": (6, 90.0, 0.5, 15.0),
}


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning("retrying %s after attempt %d: %s", getattr(state.fn, "__name__", "call"), state.attempt_number, exc)


def retrying(policy: str, *, attempts: int | None = None, max_delay_s: float | None = None) -> Retrying:
    """A tenacity Retrying for a named policy; only transient errors are retried, others raise at once."""
    n, total, first, cap = POLICIES[policy]
    return Retrying(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(attempts or n) | stop_after_delay(max_delay_s or total),
        wait=wait_exponential_jitter(initial=first, max=cap),
        before_sleep=_log_retry,
        reraise=True,
    )

