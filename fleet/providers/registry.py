"""Provider instances built from ``ModelProvider`` rows, cached per process.

A row's API key is read from the environment variable it names. The cache is rebuilt when a
row changes (its values are part of the cache key), checked at most every few seconds.
"""

from __future__ import annotations

import os
import threading
import time

from fleet.models import ModelProvider, ProviderKind
from fleet.providers.base import Provider

REFRESH_SECONDS = 5.0

_lock = threading.Lock()
_rows: dict[str, tuple[float, ModelProvider]] = {}
_instances: dict[tuple, Provider] = {}


def _row(name: str) -> ModelProvider:
    now = time.monotonic()
    cached = _rows.get(name)
    if cached is not None and now - cached[0] < REFRESH_SECONDS:
        return cached[1]
    row = ModelProvider.objects.filter(name=name).first()
    if row is None or not row.enabled:
        raise LookupError(f'no enabled model provider named "{name}" (Settings → Model providers)')
    _rows[name] = (now, row)
    return row


def _build(row: ModelProvider) -> Provider:
    # Servers without authentication (a local vLLM, Ollama, a test server) still get a
    # non-empty key: the SDKs refuse to send a request without one.
    api_key = os.environ.get(row.api_key_env, "") if row.api_key_env else ""
    if row.kind == ProviderKind.SIMULATED:
        from fleet.providers.simulated import SimulatedProvider

        return SimulatedProvider(row.name, dict(row.options))
    if row.kind == ProviderKind.OPENAI:
        from fleet.providers.openai_compat import OpenAICompatibleProvider

        return OpenAICompatibleProvider(
            row.name,
            row.base_url or "https://api.openai.com/v1",
            api_key or "unused",
            row.timeout_seconds,
        )
    if row.kind == ProviderKind.ANTHROPIC:
        from fleet.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            row.name,
            row.base_url or "https://api.anthropic.com",
            api_key or "unused",
            row.timeout_seconds,
        )
    raise LookupError(f"model provider {row.name} has an unknown kind {row.kind!r}")


def get(name: str) -> Provider:
    row = _row(name)
    key = (
        row.name,
        row.kind,
        row.base_url,
        row.api_key_env,
        row.timeout_seconds,
        repr(sorted(row.options.items())),
    )
    with _lock:
        instance = _instances.get(key)
        if instance is None:
            instance = _instances[key] = _build(row)
        return instance


def timeout(name: str) -> float:
    return _row(name).timeout_seconds


def forget() -> None:
    """Drop cached rows (after editing providers in a test or a shell)."""
    _rows.clear()
