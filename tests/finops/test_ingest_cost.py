"""Cost at ingest: every span with usage is priced as it is stored (OTLP from external agents,
and the managed runtime's own spans), and folded into the hourly rollups in the same
transaction."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import Sum
from django.utils import timezone

from cockpit.audit import Actor
from cockpit.services import api_key_create
from finops import selectors
from finops.models import CostRollup, PriceOverride
from finops.rollups import hour_of
from finops.services import price_override_save, spans_reprice
from fleet.models import ModelProvider, ProviderKind, Step
from fleet.providers import registry as providers
from tests.finops.conftest import T, span_row, write
from tests.support import otel
from tests.support.provider_servers import anthropic_message
from tests.traces.conftest import post
from traces.models import Span, Trace


@pytest.fixture
def ingest_key(team) -> str:  # noqa: ANN001
    return api_key_create(actor=Actor.system("tests"), team=team, name="otel", scopes=["ingest"])[1]


def _llm_spans():  # noqa: ANN202
    return Span.objects.filter(span_type="llm").order_by("start_time")


@pytest.mark.parametrize("deprecated", [False, True], ids=["current-names", "deprecated-names"])
def test_spans_are_priced_at_ingest_with_current_and_deprecated_token_names(
    client, ingest_key, team, deprecated
) -> None:  # noqa: ANN001
    capture = otel.Capture()
    otel.genai_refund_trace(capture, deprecated=deprecated)
    response = post(client, ingest_key, otel.protobuf(capture.spans))
    assert response.status_code == 200
    spans = list(_llm_spans())
    # gpt-4o on OpenAI: 812 × $2.50 + 96 × $10 per million tokens.
    assert [s.cost for s in spans] == [Decimal("0.002990"), Decimal("0.002990")]
    assert Span.objects.get(span_type="tool").cost is None  # a tool call has no model usage
    trace = Trace.objects.get()
    assert trace.cost == Decimal("0.005980")
    rollup = CostRollup.objects.get(model="gpt-4o")
    assert (rollup.cost, rollup.input_tokens, rollup.output_tokens, rollup.priced, rollup.unpriced) == (
        Decimal("0.005980"),
        1624,
        192,
        2,
        0,
    )
    assert rollup.provider == "openai" and rollup.agent_key == "refund-helper" and rollup.team_id == team.pk
    assert CostRollup.objects.aggregate(n=Sum("spans"))["n"] == 4  # the agent and tool spans count too


def test_cached_tokens_from_openinference_are_priced_lower(client, ingest_key) -> None:  # noqa: ANN001
    capture = otel.Capture()
    otel.langgraph_trace(capture)
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200
    span = Span.objects.get(model="claude-sonnet-4-5")
    assert (span.input_tokens, span.cache_read_tokens) == (1500, 1024)
    # Claude Sonnet 4.5: 476 fresh input at $3 / M, 1024 cache reads at $0.30 / M, 220 output at
    # $15 / M (without the cache: $0.007800).
    assert span.cost == Decimal("0.005035")
    rollup = CostRollup.objects.get(model="claude-sonnet-4-5")
    assert rollup.cache_read_tokens == 1024 and rollup.cost == span.cost


@pytest.mark.parametrize(
    "write_attribute",
    ["gen_ai.usage.cache_creation.input_tokens", "llm.token_count.prompt_details.cache_write"],
)
def test_cache_writes_are_priced_at_the_cache_write_rate(client, ingest_key, write_attribute) -> None:  # noqa: ANN001
    capture = otel.Capture()
    with capture.span(
        "chat claude",
        0,
        100,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-20250514",
            "gen_ai.usage.input_tokens": 10_000,
            "gen_ai.usage.output_tokens": 1_000,
            "gen_ai.usage.cache_read.input_tokens": 2_000,
            write_attribute: 6_000,
        },
    ):
        pass
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200
    span = Span.objects.get(span_type="llm")
    assert span.cache_write_tokens == 6_000
    # 2,000 fresh × $3 + 6,000 written × $3.75 + 2,000 read × $0.30 + 1,000 out × $15, per M
    # (as plain input the writes would come to $0.039600).
    assert span.cost == Decimal("0.044100")
    assert CostRollup.objects.get().cost == span.cost


def test_reasoning_and_audio_tokens_are_priced_at_the_models_own_rates(client, ingest_key) -> None:  # noqa: ANN001
    capture = otel.Capture()
    with capture.span(
        "ChatOpenAI",
        0,
        100,
        {
            "openinference.span.kind": "LLM",
            "llm.provider": "openai",
            "llm.model_name": "gpt-audio",
            "llm.token_count.prompt": 3_000,
            "llm.token_count.completion": 2_000,
            "llm.token_count.prompt_details.audio": 1_000,
            "llm.token_count.completion_details.audio": 1_500,
        },
    ):
        pass
    with capture.span(
        "chat sonar-deep-research",
        200,
        300,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "perplexity",
            "gen_ai.request.model": "sonar-deep-research",
            "gen_ai.usage.input_tokens": 1_000,
            "gen_ai.usage.output_tokens": 2_000,
            "gen_ai.usage.reasoning.output_tokens": 1_500,
        },
    ):
        pass
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200
    audio, research = _llm_spans()
    assert (audio.input_audio_tokens, audio.output_audio_tokens, research.reasoning_tokens) == (1_000, 1_500, 1_500)
    # gpt-audio: text $2.50 in / $10 out, audio $32 in / $64 out, per M (as text: $0.027500).
    assert audio.cost == Decimal("0.138000")
    # sonar-deep-research: $2 in, $8 out, reasoning $3, per M (reasoning as output: $0.018000).
    assert research.cost == Decimal("0.010500")


def test_an_unknown_model_stays_unpriced_and_is_listed(client, ingest_key, team, admin_user) -> None:  # noqa: ANN001
    capture = otel.Capture()
    with capture.span(
        "chat llama",
        0,
        100,
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "llama-3.1-70b-selfhosted",
            "gen_ai.usage.input_tokens": 900,
            "gen_ai.usage.output_tokens": 100,
        },
    ):
        pass
    assert post(client, ingest_key, otel.protobuf(capture.spans)).status_code == 200
    assert Span.objects.get(span_type="llm").cost is None
    rollup = CostRollup.objects.get()
    assert (rollup.cost, rollup.priced, rollup.unpriced, rollup.input_tokens) == (Decimal(0), 0, 1, 900)
    since = Span.objects.get().start_time - timedelta(hours=1)
    [unpriced] = selectors.unpriced_models(
        admin_user, filters=selectors.CostFilter(since=since, until=since + timedelta(days=1))
    )
    assert (unpriced.provider, unpriced.model, unpriced.spans, unpriced.teams) == (
        "openai",
        "llama-3.1-70b-selfhosted",
        1,
        [team.name],
    )


def test_cost_center_tags_and_workflow_are_dimensions(team) -> None:  # noqa: ANN001
    write(
        team,
        [
            span_row(attributes={"cockpit.cost_center": "claims", "gen_ai.workflow.name": "triage"}),
            span_row(resource={"cockpit.cost_center": "fraud"}),
            span_row(),
        ],
    )
    by_tag = dict(CostRollup.objects.values_list("tag", "cost"))
    assert by_tag == {
        "cockpit.cost_center=claims": Decimal("0.007500"),
        "cockpit.cost_center=fraud": Decimal("0.007500"),
        "": Decimal("0.007500"),
    }
    assert CostRollup.objects.get(tag="cockpit.cost_center=claims").workflow == "triage"


def test_rollups_are_hourly_and_upserted(team) -> None:  # noqa: ANN001
    write(team, [span_row(start=T), span_row(start=T)])
    write(team, [span_row(start=T), span_row(start=T.replace(hour=13))])
    rows = list(CostRollup.objects.order_by("hour").values_list("hour", "spans", "cost"))
    assert rows == [
        (hour_of(T), 3, Decimal("0.022500")),
        (hour_of(T.replace(hour=13)), 1, Decimal("0.007500")),
    ]


def test_a_batch_that_fails_leaves_no_rollup(team) -> None:  # noqa: ANN001
    from traces import signals

    def broken(sender, **kwargs) -> None:  # noqa: ANN001 - a receiver after the rollups' one
        assert CostRollup.objects.exists()
        raise RuntimeError("disk full")

    signals.spans_stored.connect(broken, dispatch_uid="test.broken")
    try:
        with pytest.raises(RuntimeError):
            write(team, [span_row()])
    finally:
        signals.spans_stored.disconnect(dispatch_uid="test.broken")
    assert not CostRollup.objects.exists() and not Span.objects.exists()


def test_managed_runs_spans_carry_the_steps_cost_into_rollups(make_agent, start, execute) -> None:  # noqa: ANN001
    agent = make_agent()
    run = execute(start(agent, n=3))
    assert run.status == "succeeded" and run.cost > 0
    rollup = CostRollup.objects.get(model="sim-large")
    assert rollup.cost == run.cost
    assert rollup.agent_id == agent.pk and rollup.workflow == "finops-spender" and rollup.provider == "simulated"
    assert rollup.agent_version == "1.0.0" and rollup.llm_spans == 3


def test_anthropic_cache_writes_in_managed_runs_are_journaled_carried_and_repriced(
    anthropic_server, make_agent, start, execute
) -> None:  # noqa: ANN001
    ModelProvider.objects.create(
        name="claude", kind=ProviderKind.ANTHROPIC, base_url=anthropic_server.url, api_key_env="", timeout_seconds=2
    )
    providers.forget()
    model = "claude-sonnet-4-20250514"
    anthropic_server.script(
        anthropic_message(
            "ok",
            model=model,
            input_tokens=2_000,
            output_tokens=1_000,
            cache_read_input_tokens=2_000,
            cache_creation_input_tokens=6_000,
        )
    )
    run = execute(start(make_agent(primary_model=f"claude/{model}"), n=1))
    assert run.status == "succeeded", run.error
    step = Step.objects.get(run=run, kind="llm")
    assert (step.tokens_in, step.cached_tokens, step.cache_write_tokens) == (10_000, 2_000, 6_000)
    # 2,000 fresh × $3 + 6,000 written × $3.75 + 2,000 read × $0.30 + 1,000 out × $15, per M.
    assert step.cost == run.cost == Decimal("0.044100")
    span = Span.objects.get(span_type="llm")
    assert (span.cache_read_tokens, span.cache_write_tokens, span.cost) == (2_000, 6_000, step.cost)
    # A negotiated price: repricing reads the span's cache writes and prices them at its rate.
    price_override_save(
        actor=Actor.system("tests"),
        override=PriceOverride(
            model=model,
            effective_from=span.start_time - timedelta(days=1),
            input_per_mtok=Decimal("1"),
            output_per_mtok=Decimal("5"),
            cache_read_per_mtok=Decimal("0.10"),
            cache_write_per_mtok=Decimal("2"),
        ),
    )
    spans_reprice(actor=Actor.system("tests"), since=span.start_time - timedelta(hours=1), until=timezone.now())
    span.refresh_from_db()
    # 2,000 × $1 + 6,000 × $2 + 2,000 × $0.10 + 1,000 × $5, per M.
    assert span.cost == Decimal("0.019200") == CostRollup.objects.get(model=model).cost


def test_spans_naming_no_agent_are_charged_to_their_traces_agent_even_when_it_arrives_later(team) -> None:  # noqa: ANN001
    # Exporters send a trace's spans as they end: the agent's own span (which names it) last.
    write(team, [span_row(start=T, trace_id="a" * 32), span_row(start=T, trace_id="a" * 32)])
    assert dict(CostRollup.objects.values_list("agent_key", "cost")) == {"": Decimal("0.015000")}
    agent_span = span_row(start=T, trace_id="a" * 32, span_type="agent", model="", agent_key="claims-bot")
    agent_span["input_tokens"] = agent_span["output_tokens"] = None
    write(team, [agent_span])
    by_agent = dict(CostRollup.objects.values_list("agent_key", "cost"))
    assert by_agent == {"": Decimal(0), "claims-bot": Decimal("0.015000")}
    # Later spans of the same trace find the agent among the spans stored before them.
    write(team, [span_row(start=T, trace_id="a" * 32)])
    assert CostRollup.objects.get(agent_key="claims-bot", model="gpt-4o").cost == Decimal("0.022500")
    assert CostRollup.objects.aggregate(n=Sum("spans"))["n"] == 4
