"""The span sink of Cockpit's own runtime: managed runs' spans go into the same store, through
the same normalisation, as spans that arrive over OTLP."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from django.utils import timezone
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from cockpit.models import Team
from traces import normalise, store
from traces.models import Span
from traces.services import limits

if TYPE_CHECKING:
    from collections.abc import Sequence

    from opentelemetry.sdk.trace import ReadableSpan

    from fleet.models import Run


class TraceStoreSink:
    """Stores finished runtime spans (each names its team in ``cockpit.team``)."""

    def write(self, spans: Sequence[ReadableSpan]) -> None:
        now = timezone.now()
        batch = normalise.rows_from(encode_spans(spans), limits=limits(), received_at=now)
        by_team: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in batch.rows:
            by_team[str(row["attributes"].get("cockpit.team", ""))].append(row)
        teams = Team.objects.in_bulk([slug for slug in by_team if slug], field_name="slug")
        for slug, rows in by_team.items():
            team = teams.get(slug)
            if team is not None:
                store.write(team, rows, now=now)

    def stored_span_ids(self, run: Run) -> set[str] | None:
        return set(Span.objects.filter(team_id=run.team_id, trace_id=run.trace_id).values_list("span_id", flat=True))
