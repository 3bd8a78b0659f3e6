"""System checks of Cockpit's own settings (``manage.py check --deploy``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register


@register(Tags.security, deploy=True)
def audit_key_is_set(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    if not settings.COCKPIT_AUDIT_KEY_DERIVED:
        return []
    return [
        Warning(
            "COCKPIT_AUDIT_KEY is not set: the audit log's key is derived from SECRET_KEY, so changing "
            "SECRET_KEY would make every audit row fail to verify.",
            hint="Set COCKPIT_AUDIT_KEY to a long random string of its own (see docs/audit.md).",
            id="cockpit.W001",
        )
    ]
