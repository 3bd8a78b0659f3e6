from __future__ import annotations

from django.apps import AppConfig


class SandboxConfig(AppConfig):
    name = "fleet.sandbox"
    label = "sandbox"
    verbose_name = "Demo systems"
    default_auto_field = "django.db.models.BigAutoField"
