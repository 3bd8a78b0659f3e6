"""The semantic-conventions table: which attribute names fill which typed column — current
GenAI names, the deprecated ones SDKs still emit, OpenInference and Traceloop."""

from __future__ import annotations

import pytest

from traces import semconv


@pytest.mark.parametrize(
    ("attributes", "name", "expected"),
    [
        # GenAI, current names
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 5,
                "gen_ai.usage.cache_read.input_tokens": 4,
                "gen_ai.usage.cache_creation.input_tokens": 3,
                "gen_ai.usage.reasoning.output_tokens": 2,
            },
            "chat gpt-4o",
            {
                "span_type": "llm",
                "provider": "openai",
                "model": "gpt-4o",
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_tokens": 4,
                "cache_write_tokens": 3,
                "reasoning_tokens": 2,
            },
        ),
        # the response model wins over the requested one
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
            },
            "chat",
            {"model": "gpt-4o-2024-08-06"},
        ),
        # GenAI, deprecated names
        (
            {
                "gen_ai.system": "Anthropic",
                "gen_ai.request.model": "claude-3-5-sonnet",
                "gen_ai.usage.prompt_tokens": 100,
                "gen_ai.usage.completion_tokens": 20,
            },
            "anthropic.chat",
            {"span_type": "llm", "provider": "anthropic", "input_tokens": 100, "output_tokens": 20},
        ),
        (
            {
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-sonnet-4",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.cache_read_input_tokens": 30,
                "gen_ai.usage.cache_creation_input_tokens": 50,
            },
            "anthropic.chat",
            {"input_tokens": 100, "cache_read_tokens": 30, "cache_write_tokens": 50},
        ),
        (
            {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embedding-3-small"},
            "embeddings",
            {"span_type": "embedding"},
        ),
        (
            {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
            "execute_tool search",
            {"span_type": "tool", "tool_name": "search"},
        ),
        (
            {"gen_ai.operation.name": "execute_tool"},
            "execute_tool crm.lookup",
            {"span_type": "tool", "tool_name": "crm.lookup"},
        ),
        (
            {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.id": "asst_1",
                "gen_ai.agent.name": "Triage",
                "gen_ai.agent.version": "3",
                "gen_ai.conversation.id": "conv-9",
            },
            "invoke_agent Triage",
            {
                "span_type": "agent",
                "agent_key": "asst_1",
                "agent_name": "Triage",
                "agent_version": "3",
                "conversation_id": "conv-9",
            },
        ),
        ({"gen_ai.operation.name": "create_agent"}, "create_agent", {"span_type": "agent"}),
        ({"gen_ai.operation.name": "invoke_workflow"}, "workflow", {"span_type": "chain"}),
        ({"gen_ai.operation.name": "retrieval"}, "retrieval", {"span_type": "retrieval"}),
        ({"error.type": "timeout"}, "x", {"error_type": "timeout", "span_type": "other"}),
        # OpenInference
        (
            {
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.provider": "openai",
                "llm.token_count.prompt": 7,
                "llm.token_count.completion": 3,
                "llm.token_count.prompt_details.cache_read": 1,
                "llm.token_count.prompt_details.cache_write": 2,
                "llm.token_count.prompt_details.audio": 3,
                "llm.token_count.completion_details.reasoning": 2,
                "llm.token_count.completion_details.audio": 1,
            },
            "ChatOpenAI",
            {
                "span_type": "llm",
                "model": "gpt-4o-mini",
                "provider": "openai",
                "input_tokens": 7,
                "output_tokens": 3,
                "cache_read_tokens": 1,
                "cache_write_tokens": 2,
                "input_audio_tokens": 3,
                "reasoning_tokens": 2,
                "output_audio_tokens": 1,
            },
        ),
        ({"openinference.span.kind": "LLM", "llm.system": "anthropic"}, "llm", {"provider": "anthropic"}),
        (
            {"openinference.span.kind": "TOOL", "tool.name": "get_weather"},
            "get_weather",
            {"span_type": "tool", "tool_name": "get_weather"},
        ),
        (
            {"openinference.span.kind": "AGENT", "agent.name": "researcher"},
            "researcher",
            {"span_type": "agent", "agent_name": "researcher"},
        ),
        (
            {"openinference.span.kind": "CHAIN", "session.id": "thread-1"},
            "LangGraph",
            {"span_type": "chain", "conversation_id": "thread-1"},
        ),
        ({"openinference.span.kind": "RETRIEVER"}, "retrieve", {"span_type": "retrieval"}),
        ({"openinference.span.kind": "RERANKER"}, "rerank", {"span_type": "retrieval"}),
        (
            {"openinference.span.kind": "EMBEDDING", "embedding.model_name": "bge-small"},
            "embed",
            {"span_type": "embedding", "model": "bge-small"},
        ),
        ({"openinference.span.kind": "GUARDRAIL"}, "pii check", {"span_type": "guardrail"}),
        ({"openinference.span.kind": "chain"}, "lower case kind", {"span_type": "chain"}),
        # Traceloop / OpenLLMetry
        ({"traceloop.span.kind": "workflow"}, "support.workflow", {"span_type": "chain"}),
        (
            {"traceloop.span.kind": "tool", "traceloop.entity.name": "lookup"},
            "lookup.tool",
            {"span_type": "tool", "tool_name": "lookup"},
        ),
        (
            {"traceloop.span.kind": "agent", "traceloop.entity.name": "planner"},
            "planner.agent",
            {"span_type": "agent", "agent_name": "planner"},
        ),
        # Cockpit's runtime and fall-backs
        ({"cockpit.step.kind": "approval"}, "approval payments.refund", {"span_type": "approval"}),
        ({"cockpit.operator.action": "pause"}, "operator pause", {"span_type": "operator"}),
        ({"llm.model_name": "mistral-large"}, "call", {"span_type": "llm"}),
        ({}, "input guardrail", {"span_type": "guardrail"}),
        ({}, "GET /health", {"span_type": "other", "model": "", "input_tokens": None}),
        # junk values are ignored, not trusted
        (
            {"gen_ai.usage.input_tokens": "many", "gen_ai.usage.output_tokens": -5},
            "x",
            {"input_tokens": None, "output_tokens": None},
        ),
    ],
)
def test_the_mapping_table(attributes, name, expected) -> None:
    meaning = semconv.read(attributes, name)
    assert {field: getattr(meaning, field) for field in expected} == expected
