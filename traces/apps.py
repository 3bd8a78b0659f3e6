"""Traces: OTLP ingestion, the span store and the trace views."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


class TracesConfig(AppConfig):
    name = "traces"
    verbose_name = "Traces"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from cockpit import access, live
        from cockpit.roles import TeamPerm
        from fleet import seams
        from traces.sink import TraceStoreSink

        seams.register(span_sink=TraceStoreSink())

        def can_view_trace(user: User | AnonymousUser, ident: str) -> bool:
            from traces.models import Trace

            if not ident.isdigit():
                return False
            team_id = Trace.objects.filter(pk=int(ident)).values_list("team_id", flat=True).first()
            return team_id is not None and access.has_team_perm(user, TeamPerm.VIEW, team_id)

        live.register_topic("trace", can_view_trace)
