"""Retries with backoff and jitter (tenacity) and circuit breakers whose state every worker
shares through Redis (pybreaker), per model provider and per tool."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import pybreaker
import redis
from django.conf import settings
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
)
from tenacity.wait import wait_random_exponential

from fleet.providers.base import TransientProviderError
from fleet.runtime.errors import TransientToolError

logger = logging.getLogger(__name__)

CircuitOpen = pybreaker.CircuitBreakerError

_lock = threading.Lock()
_breakers: dict[str, pybreaker.CircuitBreaker] = {}
_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process (re-made after a fork). pybreaker needs raw bytes responses."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (
            os.getpid(),
            redis.Redis.from_url(settings.REDIS_URL, decode_responses=False, socket_timeout=2),
        )
    return _client[1]


def breaker(name: str) -> pybreaker.CircuitBreaker:
    """The breaker for ``provider:<name>`` or ``tool:<name>``: opens after ``BREAKER_FAIL_MAX``
    failures in a row (permanent errors do not count), lets one call through after
    ``BREAKER_RESET_SECONDS``. Its state lives in Redis, shared by every worker."""
    pid = os.getpid()
    key = f"{pid}:{name}"
    with _lock:
        found = _breakers.get(key)
        if found is None:
            storage: pybreaker.CircuitBreakerStorage
            try:
                storage = pybreaker.CircuitRedisStorage(
                    pybreaker.STATE_CLOSED,
                    _redis(),
                    namespace=f"{settings.REDIS_PREFIX}:breaker:{name}",
                )
            except redis.RedisError:
                # Redis is down: keep this process's own count rather than fail the call.
                logger.warning("breaker %s: Redis unreachable, state kept in this process only", name)
                storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
            found = pybreaker.CircuitBreaker(
                fail_max=int(settings.COCKPIT["BREAKER_FAIL_MAX"]),
                reset_timeout=float(settings.COCKPIT["BREAKER_RESET_SECONDS"]),
                # Only failures that say the other side is unwell count; a bad request does not.
                exclude=[lambda exc: not isinstance(exc, TransientProviderError | TransientToolError)],
                state_storage=storage,
                name=name,
            )
            _breakers[key] = found
        return found


def breaker_state(name: str) -> str:
    return breaker(name).current_state


def _wait(state: RetryCallState) -> float:
    """Exponential backoff with full jitter, but never sooner than a Retry-After asked for."""
    base = wait_random_exponential(
        multiplier=settings.COCKPIT["RETRY_BASE_SECONDS"],
        max=settings.COCKPIT["RETRY_MAX_WAIT_SECONDS"],
    )(state)
    exc = state.outcome.exception() if state.outcome else None
    retry_after = getattr(exc, "retry_after", None) or 0
    return max(base, min(float(retry_after), settings.COCKPIT["RETRY_MAX_WAIT_SECONDS"]))


def call_with_retries[T](
    call: Callable[[], T],
    *,
    transient: tuple[type[BaseException], ...],
    on_attempt: Callable[[], None] | None = None,
    label: str = "",
) -> T:
    """Run ``call``; retry the ``transient`` errors with backoff until the attempts or the time
    budget run out, then re-raise the last one. Other errors (and an open circuit) pass at once."""
    retrying = Retrying(
        retry=retry_if_exception_type(transient),
        stop=stop_after_attempt(int(settings.COCKPIT["RETRY_MAX_ATTEMPTS"]))
        | stop_after_delay(settings.COCKPIT["RETRY_MAX_SECONDS"]),
        wait=_wait,
        reraise=True,
        before_sleep=lambda state: logger.info(
            "%s: attempt %d failed (%s); retrying",
            label,
            state.attempt_number,
            state.outcome.exception() if state.outcome else "",
        ),
    )
    for attempt in retrying:
        with attempt:
            if on_attempt is not None:
                on_attempt()
            return call()
    raise AssertionError("unreachable")  # pragma: no cover


def guarded[T](name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` through the named breaker."""
    return breaker(name).call(fn, *args, **kwargs)
