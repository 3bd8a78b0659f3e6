"""Retries with backoff and jitter (tenacity) and circuit breakers whose state every worker
shares through Redis (pybreaker), per model provider and per tool."""

from __future__ import annotations

import logging
import os
import threading
import time
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

_local = threading.local()
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


class _SharedState(pybreaker.CircuitRedisStorage):
    """pybreaker's Redis storage, minus the round trips on the path of a successful call: the
    shared state is re-read at most every ``STATE_TTL`` seconds, and the failure counter is
    reset only when it may be non-zero. A circuit opened by another worker is therefore seen
    within a second; failures and state changes are still written at once."""

    STATE_TTL = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._cached: tuple[float, str] | None = None
        self._counter_may_be_set = True
        super().__init__(*args, **kwargs)

    @property
    def state(self) -> str:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self.STATE_TTL:
            self._cached = (now, pybreaker.CircuitRedisStorage.state.fget(self))  # type: ignore[attr-defined]
            self._counter_may_be_set = True  # other workers may have counted failures meanwhile
        return self._cached[1]

    @state.setter
    def state(self, state: str) -> None:
        pybreaker.CircuitRedisStorage.state.fset(self, state)  # type: ignore[attr-defined]
        self._cached = (time.monotonic(), state)

    def increment_counter(self) -> None:
        super().increment_counter()
        self._counter_may_be_set = True

    def reset_counter(self) -> None:
        if self._counter_may_be_set:
            super().reset_counter()
            self._counter_may_be_set = False


def breaker(name: str) -> pybreaker.CircuitBreaker:
    """The breaker for ``provider:<name>`` or ``tool:<name>``: opens after ``BREAKER_FAIL_MAX``
    failures in a row (permanent errors do not count), lets one call through after
    ``BREAKER_RESET_SECONDS``. Its state lives in Redis, shared by every worker.

    One breaker object per thread: pybreaker holds an object's lock for the whole call, which
    would let one thread's slow model call block every other thread's. The objects share their
    state through Redis, so they act as one breaker."""
    breakers: dict[str, pybreaker.CircuitBreaker] = getattr(_local, "breakers", {})
    _local.breakers = breakers
    key = f"{os.getpid()}:{name}"
    found = breakers.get(key)
    if found is None:
        storage: pybreaker.CircuitBreakerStorage
        try:
            storage = _SharedState(
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
        breakers[key] = found
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
