"""Traces: OTLP ingest end to end (accepted → queryable) next to a raw COPY of the same rows, the
trace view's server time for a 10,000-span trace, and the trace list over millions of spans.

    make bench BENCH_ARGS=traces     (DATABASE_URL=postgres://… for the figures that matter)
"""

from __future__ import annotations

import gzip
import json
import random
import statistics
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.bench.util import percentile, summary_ms

TITLE = "Traces: ingest throughput, trace view (10,000 spans), trace list (millions of spans)"

# Ingest: realistic GenAI spans (~1.5 KB), 20–50 per trace, 500 per request, 4 senders.
INGEST_REQUESTS = 64
SPANS_PER_REQUEST = 500
SENDERS = 4
INGEST_ROUNDS = 3
WEB_PROCESSES = 2  # one per core of the 2-core machine the targets were set on
# Trace view
VIEW_SPANS = 10_000
VIEW_RUNS = 15
# Trace list: summary rows standing for ≥ 1,000,000 spans (20–50 spans each).
LIST_TRACES = 200_000
LIST_TEAMS = 4
LIST_RUNS = 25
TOOLS = [f"{area}.{verb}" for area in ("crm", "billing", "kb", "mail", "search", "orders") for verb in "abcdefghij"]


def run() -> list[str]:
    lines: list[str] = []
    lines += _ingest()
    lines += _trace_view()
    lines += _trace_list()
    return lines


# --- Shared -----------------------------------------------------------------------------------


def _team(slug: str):  # noqa: ANN202
    from cockpit.models import Team

    return Team.objects.get_or_create(slug=slug, defaults={"name": slug.replace("-", " ").title()})[0]


def _superuser():  # noqa: ANN202
    from django.contrib.auth import get_user_model

    user, _ = get_user_model().objects.get_or_create(username="bench-traces-root", defaults={"is_superuser": True})
    return user


def _timed(client: Any, url: str, runs: int) -> tuple[list[float], Any]:
    client.get(url)  # warm: sessions, caches, plans
    times, response = [], None
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url)
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    return times, response


# --- (1) Ingest -------------------------------------------------------------------------------


def _kv(key: str, value: Any) -> Any:
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _requests(count: int, rng: random.Random) -> list[bytes]:
    """OTLP protobuf bodies of ``SPANS_PER_REQUEST`` spans: traces of 20–50 spans of an agent
    calling a model and tools, with messages and arguments (≈1.5 KB a span)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.resource.v1.resource_pb2 import Resource
    from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

    prompt = "Customer writes: my order arrived damaged and I would like a refund or a replacement. " * 6
    bodies = []
    base = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1e9)
    for _ in range(count):
        spans: list[Span] = []
        while len(spans) < SPANS_PER_REQUEST:
            size = min(rng.randint(20, 50), SPANS_PER_REQUEST - len(spans))
            trace_id = rng.randbytes(16)
            root_id = rng.randbytes(8)
            start = base + rng.randint(0, 86_400) * 10**9
            at = start
            children = []
            for k in range(size - 1):
                span_id = rng.randbytes(8)
                duration = rng.randint(20, 1500) * 10**6
                if k % 4 == 0:
                    name = "chat gpt-4o"
                    attributes = [
                        _kv("gen_ai.operation.name", "chat"),
                        _kv("gen_ai.provider.name", "openai"),
                        _kv("gen_ai.request.model", "gpt-4o"),
                        _kv("gen_ai.response.model", "gpt-4o-2024-08-06"),
                        _kv("gen_ai.usage.input_tokens", rng.randint(300, 3000)),
                        _kv("gen_ai.usage.output_tokens", rng.randint(20, 400)),
                        _kv(
                            "gen_ai.input.messages",
                            json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}]),
                        ),
                        _kv(
                            "gen_ai.output.messages",
                            json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": prompt[:300]}]}]),
                        ),
                        _kv("gen_ai.agent.name", "support-desk"),
                        _kv("gen_ai.conversation.id", f"conv-{trace_id.hex()[:12]}"),
                    ]
                else:
                    tool = rng.choice(TOOLS)
                    name = f"execute_tool {tool}"
                    attributes = [
                        _kv("gen_ai.operation.name", "execute_tool"),
                        _kv("gen_ai.tool.name", tool),
                        _kv("gen_ai.tool.call.id", f"call_{span_id.hex()}"),
                        _kv(
                            "gen_ai.tool.call.arguments",
                            json.dumps({"order": rng.randint(1, 10**6), "note": prompt[:500]}),
                        ),
                        _kv("gen_ai.tool.call.result", json.dumps({"ok": True, "detail": prompt[:600]})),
                        _kv("gen_ai.agent.name", "support-desk"),
                    ]
                error = rng.random() < 0.03
                children.append(
                    Span(
                        trace_id=trace_id,
                        span_id=span_id,
                        parent_span_id=root_id,
                        name=name,
                        kind=Span.SPAN_KIND_INTERNAL,
                        start_time_unix_nano=at,
                        end_time_unix_nano=at + duration,
                        attributes=attributes,
                        status=Status(code=Status.STATUS_CODE_ERROR, message="upstream timeout")
                        if error
                        else Status(),
                    )
                )
                at += duration
            root = Span(
                trace_id=trace_id,
                span_id=root_id,
                name="invoke_agent support-desk",
                kind=Span.SPAN_KIND_SERVER,
                start_time_unix_nano=start,
                end_time_unix_nano=at + 10**6,
                attributes=[_kv("gen_ai.operation.name", "invoke_agent"), _kv("gen_ai.agent.name", "support-desk")],
            )
            spans += [root, *children]
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(attributes=[_kv("service.name", "support-bot"), _kv("deployment.env", "bench")]),
                    scope_spans=[ScopeSpans(spans=spans)],
                )
            ]
        )
        bodies.append(request.SerializeToString())
    return bodies


def _send(bodies: list[bytes], posters: list[Any]) -> tuple[float, list[float], list[int]]:
    """Post every body from ``SENDERS`` threads (sender n uses ``posters[n % len(posters)]``);
    the wall time, each request's latency, and the statuses other than 200."""
    from django.db import connection as main_connection

    queue = list(bodies)
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[int] = []

    def sender(post: Any) -> None:
        from django.db import connection

        try:
            while True:
                with lock:
                    if not queue:
                        return
                    body = queue.pop()
                started = time.perf_counter()
                status = post(body)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    failures.append(status)
        finally:
            if connection is not main_connection:
                connection.close()

    threads = [threading.Thread(target=sender, args=(posters[n % len(posters)],)) for n in range(SENDERS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, latencies, failures


def _ingest() -> list[str]:
    from django.db import connection
    from django.test import Client
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from cockpit.audit import Actor
    from cockpit.services import api_key_create
    from traces import normalise, store
    from traces.models import Span

    lines = []
    rng = random.Random(7)
    bodies = _requests(INGEST_REQUESTS, rng)
    total_spans = INGEST_REQUESTS * SPANS_PER_REQUEST
    raw_bytes = sum(len(b) for b in bodies)
    team, copy_team = _team("bench-ingest"), _team("bench-ingest-copy")
    for t in (team, copy_team):
        _clear(t)
    key = api_key_create(actor=Actor.system("bench"), team=team, name="bench", scopes=["ingest"])[1]
    lines.append(
        f"ingest: {INGEST_REQUESTS} OTLP protobuf requests × {SPANS_PER_REQUEST} spans = {total_spans:,} spans, "
        f"{raw_bytes / total_spans:,.0f} B/span as protobuf, {SENDERS} concurrent senders"
    )

    zipped = [gzip.compress(body, 1) for body in bodies]
    headers = {"authorization": f"Bearer {key}", "content-encoding": "gzip", "content-type": "application/x-protobuf"}

    def in_process(body: bytes) -> int:
        client = getattr(local, "client", None) or Client()
        local.client = client
        return client.generic(
            "POST", "/v1/traces", body, content_type=headers["content-type"], headers=headers
        ).status_code

    def over_http(url: str) -> Any:
        def post(body: bytes) -> int:
            request = urllib.request.Request(f"{url}/v1/traces", data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    return response.status
            except urllib.error.HTTPError as exc:
                return exc.code

        return post

    local = threading.local()
    lines.append("  in process: Django test Client, 4 sender threads (one process: one core)")
    _clear(team)
    elapsed, latencies, failures = _send(zipped, [in_process])
    stored = Span.objects.filter(team=team).count()  # accepted = committed = queryable
    lines.append(
        f"    end to end: {stored / elapsed:,.0f} spans/s ({stored:,} stored in {elapsed:.2f} s; "
        f"{len(failures)} refused: {sorted(set(failures))})"
    )

    # The same rows, normalised beforehand, for one raw psycopg COPY stream.
    rows: list[dict[str, Any]] = []
    now = datetime.now(UTC)
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        batch = normalise.rows_from(request, limits=normalise.Limits(), received_at=now)
        for row in batch.rows:
            row.update(team_id=copy_team.pk, run_id=None, agent_id=None, cost=None)
        rows += batch.rows
    values = [
        [store._dumps(row[c]) if c in store.JSON_COLUMNS else row[c] for c in store.COLUMNS]  # noqa: SLF001
        for row in rows
    ]

    # Over HTTP and raw COPY in turns, so that both see the same machine (a shared one's speed
    # drifts by tens of percent from minute to minute): the medians of the rounds are compared.
    from tests.support import processes

    webs = [processes.start_web() for _ in range(WEB_PROCESSES)]
    posters = [over_http(url) for _, url in webs]
    http_rates: list[float] = []
    copy_rates: list[float] = []
    lines.append(f"  over HTTP: {WEB_PROCESSES} daphne processes, {SENDERS} sender threads; raw COPY in between")
    try:
        for n in range(INGEST_ROUNDS):
            _clear(team)
            elapsed, latencies, failures = _send(zipped, posters)
            stored = Span.objects.filter(team=team).count()  # accepted = committed = queryable
            http_rates.append(stored / elapsed)
            line = (
                f"    round {n + 1}: end to end {http_rates[-1]:,.0f} spans/s ({stored:,} stored in {elapsed:.2f} s, "
                f"{len(failures)} refused {sorted(set(failures))}, p50 {percentile(latencies, 50) * 1000:.0f} ms "
                "a request)"
            )
            if connection.vendor == "postgresql":
                _clear(copy_team)
                copy_rates.append(_raw_copy(values))
                line += f"; raw COPY {copy_rates[-1]:,.0f} spans/s"
            lines.append(line)
    finally:
        for web, _ in webs:
            web.stop()
    http_rate = statistics.median(http_rates)
    lines.append(
        "  end to end over HTTP (decode, normalise, link, price, summarise, COPY, commit): "
        f"median {http_rate:,.0f} spans/s"
    )
    if copy_rates:
        copy_rate = statistics.median(copy_rates)
        lines.append(f"  raw psycopg COPY of the same rows (one stream): median {copy_rate:,.0f} spans/s")
        lines.append(
            f"  over HTTP / raw COPY: {http_rate / copy_rate:.0%} "
            f"(round by round: {', '.join(f'{h / c:.0%}' for h, c in zip(http_rates, copy_rates, strict=True))})"
        )
        lines.append("  (targets: ≥ 10,000 spans/s end to end and ≥ 30 % of the raw COPY rate)")
    else:
        lines.append("  raw COPY: PostgreSQL only")
    for t in (team, copy_team):
        _clear(t)
    return lines


def _clear(team: Any) -> None:
    from traces.models import Span, Trace

    Span.objects.filter(team=team).delete()
    Trace.objects.filter(team=team).delete()


def _raw_copy(values: list[list[Any]]) -> float:
    """Rows per second of one psycopg COPY stream writing ``values``, committed."""
    from django.db import connection

    from traces import store
    from traces.models import Span

    connection.ensure_connection()
    raw = connection.connection
    columns = ", ".join(store.COLUMNS)
    started = time.perf_counter()
    with raw.cursor() as cursor, cursor.copy(f"COPY {Span._meta.db_table} ({columns}) FROM STDIN") as copy:
        for value in values:
            copy.write_row(value)
    raw.commit()
    return len(values) / (time.perf_counter() - started)


# --- (2) Trace view ---------------------------------------------------------------------------


def _trace_view() -> list[str]:
    from django.test import Client

    from tests.traces import explorer_spans
    from traces import selectors
    from traces.models import Span, Trace

    team = _team("bench-view")
    Span.objects.filter(team=team).delete()
    Trace.objects.filter(team=team).delete()
    started = time.perf_counter()
    trace = explorer_spans.agent_trace(team, spans=VIEW_SPANS)
    built = time.perf_counter() - started
    client = Client()
    client.force_login(_superuser())
    lines = [f"trace view: a trace of {trace.span_count:,} spans (written in {built:.1f} s)"]
    page_times, page = _timed(client, f"/traces/{trace.pk}/", VIEW_RUNS)
    lines.append(f"  page (header + embedded span rows): {summary_ms(page_times)}  (target ≤ 300 ms)")
    data_times, data = _timed(client, f"/traces/{trace.pk}/spans.json", VIEW_RUNS)
    body = data.content
    lines.append(f"  span rows as JSON (live refresh): {summary_ms(data_times)}")
    lines.append(
        f"  JSON: {len(body) / 1024:,.0f} KiB ({len(body) / trace.span_count:.0f} B/span), "
        f"{len(gzip.compress(body)) / 1024:,.0f} KiB gzipped; page {len(page.content) / 1024:,.0f} KiB"
    )
    build_times = []
    for _ in range(VIEW_RUNS):
        started = time.perf_counter()
        selectors.trace_view_data(trace)
        build_times.append(time.perf_counter() - started)
    lines.append(f"  of which reading and shaping the rows: {summary_ms(build_times)}")
    span_id = Span.objects.filter(team=team, trace_id=trace.trace_id, span_type="llm").values_list(
        "span_id", flat=True
    )[0]
    detail_times, _ = _timed(client, f"/traces/{trace.pk}/spans/{span_id}/", VIEW_RUNS)
    lines.append(f"  one span's detail (conversation, attributes): {summary_ms(detail_times)}")
    return lines


# --- (3) Trace list ---------------------------------------------------------------------------


def _list_rows(teams: list[Any], agents: dict[int, list[int]], rng: random.Random) -> list[list[Any]]:
    now = datetime(2026, 3, 1, tzinfo=UTC)
    rows = []
    for n in range(LIST_TRACES):
        team = teams[n % len(teams)]
        started = now - timedelta(seconds=rng.randint(0, 30 * 86_400))
        spans = rng.randint(20, 50)
        duration = rng.randint(2, 90) * 10**6 if rng.random() > 0.01 else rng.randint(300, 3600) * 10**6
        errors = rng.randint(1, 3) if rng.random() < 0.08 else 0
        status = "error" if errors and rng.random() < 0.3 else ("open" if rng.random() < 0.01 else "ok")
        model = "claude-sonnet-4-5" if rng.random() < 0.05 else "gpt-4o"
        tools = sorted({rng.choice(TOOLS) for _ in range(rng.randint(2, 6))})
        if rng.random() < 0.002:
            tools.append("payments.refund_override")
        agent_id = rng.choice(agents[team.pk])
        cost = round(rng.uniform(0.001, 0.2), 6) if rng.random() > 0.005 else round(rng.uniform(1, 5), 6)
        search = "\n".join(
            sorted({"invoke_agent support-desk", "chat gpt-4o", *(f"execute_tool {t}" for t in tools), *tools})
        )
        rows.append(
            [
                team.pk,
                rng.randbytes(16).hex(),
                "invoke_agent support-desk",
                rng.randbytes(8).hex(),
                "agent",
                "support-bot",
                agent_id,
                "support-desk",
                "support-desk",
                None,
                started,
                started + timedelta(microseconds=duration),
                duration,
                spans,
                errors,
                spans // 4,
                spans - spans // 4 - 1,
                spans * 300,
                spans * 40,
                cost,
                status,
                f"|{model}|",
                search,
                False,
                started,
            ]
        )
    return rows


LIST_COLUMNS = (
    "team_id, trace_id, root_name, root_span_id, root_type, service_name, agent_id, agent_name, agent_key, run_id, "
    "started_at, ended_at, duration_us, span_count, error_count, llm_count, tool_count, input_tokens, output_tokens, "
    "cost, status, model_names, search, incident, updated_at"
)


def _trace_list() -> list[str]:
    from django.db import connection
    from django.test import Client

    from cockpit.audit import Actor
    from cockpit.roles import Role
    from cockpit.services import membership_grant
    from fleet.models import Agent, AgentKind
    from fleet.services import agent_create
    from traces import selectors
    from traces.models import Trace

    teams = [_team(f"bench-list-{n}") for n in range(LIST_TEAMS)]
    agents: dict[int, list[int]] = {}
    for team in teams:
        for k in range(10):
            if not Agent.objects.filter(team=team, slug=f"agent-{k}").exists():
                agent_create(
                    actor=Actor.system("bench"),
                    team=team,
                    slug=f"agent-{k}",
                    name=f"Agent {k}",
                    kind=AgentKind.EXTERNAL,
                )
        agents[team.pk] = list(Agent.objects.filter(team=team).values_list("pk", flat=True))
    lines = []
    present = Trace.objects.filter(team__in=teams).count()
    if present != LIST_TRACES:
        Trace.objects.filter(team__in=teams).delete()
        rows = _list_rows(teams, agents, random.Random(11))
        started = time.perf_counter()
        if connection.vendor == "postgresql":
            with (
                connection.cursor() as cursor,
                cursor.cursor.copy(f"COPY {Trace._meta.db_table} ({LIST_COLUMNS}) FROM STDIN") as copy,
            ):
                for row in rows:
                    copy.write_row(row)
            with connection.cursor() as cursor:
                cursor.execute(f"ANALYZE {Trace._meta.db_table}")
        else:
            names = [c.strip() for c in LIST_COLUMNS.split(",")]
            Trace.objects.bulk_create([Trace(**dict(zip(names, row, strict=True))) for row in rows], batch_size=2000)
        lines.append(f"trace list: {LIST_TRACES:,} traces written in {time.perf_counter() - started:.1f} s")
    total = Trace.objects.count()
    spans = sum(Trace.objects.filter(team__in=teams).values_list("span_count", flat=True).iterator(chunk_size=20_000))
    lines.append(f"trace list: {total:,} summary rows standing for {spans:,} spans ({LIST_TEAMS} teams)")

    root = Client()
    root.force_login(_superuser())
    from django.contrib.auth import get_user_model

    viewer, created = get_user_model().objects.get_or_create(username="bench-traces-viewer")
    if created:
        membership_grant(actor=Actor.system("bench"), user=viewer, team=teams[0], role=Role.VIEWER)
    member = Client()
    member.force_login(viewer)
    agent = agents[teams[0].pk][3]
    deep = list(
        selectors.visible_traces(viewer).order_by("-started_at", "-pk").values_list("started_at", "pk")[1000:1001]
    )[0]
    cursor = selectors.TraceCursor(deep[0], deep[1]).encode()
    window = "since=2026-02-15T00:00&until=2026-02-16T00:00"
    cases = [
        ("first page, every team (superuser)", root, ""),
        ("first page, one team (viewer)", member, ""),
        ("status = error", member, "status=error"),
        ("has errors", member, "with_errors=on"),
        ("agent", member, f"agent={agent}"),
        ("model (5 % of traces)", member, "model=claude"),
        ("text: a tool in 1.7 % of traces", member, "q=crm.c"),
        ("text: a tool in 0.2 % of traces", member, "q=refund_override"),
        ("min cost $1 (0.5 % of traces)", member, "min_cost=1"),
        ("min duration 300 s (1 %)", member, "min_duration=300"),
        ("one day's window", member, window),
        ("20 pages deep (keyset cursor)", member, f"after={cursor}"),
        ("errors + model + one day", member, f"with_errors=on&model=claude&{window}"),
    ]
    p95s = []
    for label, client, query in cases:
        times, response = _timed(client, f"/traces/?{query}", LIST_RUNS)
        shown = response.content.count(b'<td class="trace-name">')
        p95s.append(percentile(times, 95) * 1000)
        lines.append(f"  {label:<38} {summary_ms(times)}  ({shown} rows)")
    above = Trace.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
    times = []
    for _ in range(LIST_RUNS):
        started = time.perf_counter()
        member.get(f"/traces/?above={above - 500}", headers={"hx-request": "true", "hx-target": "trace-arrivals"})
        times.append(time.perf_counter() - started)
    lines.append(f"  {'new-arrivals bar (live re-fetch)':<38} {summary_ms(times)}")
    lines.append(f"  worst p95 of the list pages: {max(p95s):.1f} ms  (target ≤ 150 ms)")
    return lines
