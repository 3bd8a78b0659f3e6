from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


class FleetConfig(AppConfig):
    name = "fleet"
    verbose_name = "Fleet"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.conf import settings
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        from cockpit import access, live, telemetry
        from cockpit.roles import TeamPerm
        from fleet.telemetry import SinkExporter

        for module in settings.COCKPIT_AGENT_MODULES:
            importlib.import_module(module)

        def can_view(model_name: str):  # noqa: ANN202
            def check(user: User | AnonymousUser, ident: str) -> bool:
                from fleet import models

                if not ident.isdigit():
                    return False
                team_id = (
                    getattr(models, model_name).objects.filter(pk=int(ident)).values_list("team_id", flat=True).first()
                )
                return team_id is not None and access.has_team_perm(user, TeamPerm.VIEW, team_id)

            return check

        live.register_topic("run", can_view("Run"))
        live.register_topic("agent", can_view("Agent"))
        # Spans are stored in the background, in batches (a step's journal write stays one
        # statement); what a dying worker had not stored yet is re-emitted when its run ends.
        delay = int(settings.COCKPIT["SPAN_EXPORT_DELAY_MS"])
        telemetry.register_span_processor(
            lambda: (
                BatchSpanProcessor(SinkExporter(), schedule_delay_millis=delay, max_export_batch_size=512)
                if delay
                else SimpleSpanProcessor(SinkExporter())
            )
        )
        post_migrate.connect(_sync_tools, sender=self, dispatch_uid="fleet.tools_sync")


def _sync_tools(**kwargs: Any) -> None:
    """Tools are defined in code; their rows follow each migrate (as permissions do)."""
    from fleet.services import tools_sync

    tools_sync()
