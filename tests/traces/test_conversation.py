"""A span's prompt and completion read as a conversation, whichever convention wrote them; a tool
call's arguments and result; and nothing an agent sends can make the reading fail."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from traces.conversation import conversation, readable, tool_io


def roles_and_texts(messages) -> list[tuple[str, str]]:  # noqa: ANN001
    return [(m.role, m.text) for m in messages]


def test_genai_messages_made_of_parts() -> None:
    attributes = {
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "You are the refund desk."}]),
        "gen_ai.input.messages": json.dumps(
            [
                {"role": "user", "parts": [{"type": "text", "content": "My order arrived broken."}]},
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "tool_call", "id": "call_1", "name": "crm.get_ticket", "arguments": {"id": 123}}
                    ],
                },
                {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": {"ok": 1}}]},
            ]
        ),
        "gen_ai.output.messages": json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [
                        {"type": "reasoning", "content": "Policy allows it."},
                        {"type": "text", "content": "I will refund €80."},
                    ],
                    "finish_reason": "stop",
                }
            ]
        ),
    }
    found = conversation(attributes)
    assert found.source.startswith("gen_ai.input.messages")
    assert [m.role for m in found.input] == ["system", "user", "assistant", "tool"]
    assert found.input[0].text == "You are the refund desk."
    call = found.input[2].parts[0]
    assert (call.kind, call.name, call.call_id, json.loads(call.text)) == (
        "tool_call",
        "crm.get_ticket",
        "call_1",
        {"id": 123},
    )
    result = found.input[3].parts[0]
    assert (result.kind, result.call_id, json.loads(result.text)) == ("tool_result", "call_1", {"ok": 1})
    answer = found.output[0]
    assert [p.kind for p in answer.parts] == ["reasoning", "text"]
    assert (answer.text, answer.finish_reason) == ("I will refund €80.", "stop")


def test_genai_messages_sent_as_structured_values_and_openai_style() -> None:
    """Some SDKs send the messages as an OTLP array (not JSON text), or in OpenAI's shape."""
    attributes = {
        "gen_ai.input.messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c9",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c9", "content": '{"temp": 18}'},
        ],
        "gen_ai.output.messages": json.dumps([{"role": "assistant", "content": [{"type": "text", "text": "18 °C."}]}]),
    }
    found = conversation(attributes)
    assert roles_and_texts(found.input)[0] == ("user", "Weather in Paris?")
    call = found.input[1].parts[0]
    assert (call.kind, call.name, json.loads(call.text)) == ("tool_call", "get_weather", {"city": "Paris"})
    assert (found.input[2].parts[0].kind, found.input[2].parts[0].call_id) == ("tool_result", "c9")
    assert found.output[0].text == "18 °C."


def test_deprecated_flattened_prompt_and_completion() -> None:
    attributes = {
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "Refund ticket 123?",
        "gen_ai.prompt.10.role": "user",
        "gen_ai.prompt.10.content": "(the eleventh message sorts after the second)",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.finish_reason": "tool_calls",
        "gen_ai.completion.0.tool_calls.0.name": "payments.refund",
        "gen_ai.completion.0.tool_calls.0.arguments": '{"amount": 80}',
        "gen_ai.usage.prompt_tokens": 20,
    }
    found = conversation(attributes)
    assert found.source == "gen_ai.prompt.N / gen_ai.completion.N"
    assert roles_and_texts(found.input) == [
        ("system", "Be brief."),
        ("user", "Refund ticket 123?"),
        ("user", "(the eleventh message sorts after the second)"),
    ]
    answer = found.output[0]
    assert answer.finish_reason == "tool_calls"
    assert (answer.parts[0].name, json.loads(answer.parts[0].text)) == ("payments.refund", {"amount": 80})


def test_openinference_input_and_output_messages() -> None:
    attributes = {
        "openinference.span.kind": "LLM",
        "llm.input_messages.0.message.role": "system",
        "llm.input_messages.0.message.content": "You answer about weather.",
        "llm.input_messages.1.message.role": "user",
        "llm.input_messages.1.message.contents.0.message_content.type": "text",
        "llm.input_messages.1.message.contents.0.message_content.text": "And in Lyon?",
        "llm.input_messages.1.message.contents.1.message_content.type": "image",
        "llm.input_messages.1.message.contents.1.message_content.image.image.url": "https://example.com/map.png",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "get_weather",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": '{"city": "Lyon"}',
        "llm.output_messages.0.message.tool_calls.0.tool_call.id": "t-1",
        "input.value": "ignored when messages are present",
    }
    found = conversation(attributes)
    assert found.source == "llm.input_messages / llm.output_messages"
    assert roles_and_texts(found.input) == [("system", "You answer about weather."), ("user", "And in Lyon?")]
    assert found.input[1].parts[1].kind == "media" and "map.png" in found.input[1].parts[1].text
    call = found.output[0].parts[0]
    assert (call.kind, call.name, call.call_id, json.loads(call.text)) == (
        "tool_call",
        "get_weather",
        "t-1",
        {"city": "Lyon"},
    )


def test_input_and_output_value_when_there_are_no_messages() -> None:
    found = conversation({"input.value": '{"question": "refund policy?"}', "output.value": "Within 30 days."})
    assert found.source == "input.value / output.value"
    assert [m.role for m in found.input + found.output] == ["input", "output"]
    assert json.loads(found.input[0].text) == {"question": "refund policy?"}
    assert "\n" in found.input[0].text  # indented for reading
    assert found.output[0].text == "Within 30 days."


def test_older_event_based_messages() -> None:
    events = [
        {"name": "gen_ai.user.message", "time": 1, "attributes": {"content": "Hello"}},
        {"name": "gen_ai.choice", "time": 2, "attributes": {"message": '{"role": "assistant", "content": "Hi!"}'}},
    ]
    found = conversation({}, events)
    assert roles_and_texts(found.input) == [("user", "Hello")]
    assert roles_and_texts(found.output) == [("assistant", "Hi!")]


def test_no_messages_is_an_empty_conversation() -> None:
    found = conversation({"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"})
    assert not found and found.input == [] and found.output == []


def test_tool_arguments_and_result_from_each_convention() -> None:
    genai = tool_io(
        {
            "gen_ai.tool.name": "payments.refund",
            "gen_ai.tool.call.id": "c1",
            "gen_ai.tool.call.arguments": '{"amount": 80}',
            "gen_ai.tool.call.result": '{"refund_id": "R-9"}',
        }
    )
    assert (genai.name, genai.call_id) == ("payments.refund", "c1")
    assert json.loads(genai.arguments) == {"amount": 80} and json.loads(genai.result) == {"refund_id": "R-9"}
    openinference = tool_io({"tool.name": "get_weather", "input.value": '{"city": "Paris"}', "output.value": "18"})
    assert (openinference.name, json.loads(openinference.arguments), openinference.result) == (
        "get_weather",
        {"city": "Paris"},
        "18",
    )
    traceloop = tool_io({"traceloop.entity.input": '{"q": 1}', "traceloop.entity.output": "done"})
    assert (json.loads(traceloop.arguments), traceloop.result) == ({"q": 1}, "done")
    assert not tool_io({"gen_ai.tool.name": "noop"})


def test_malformed_values_are_shown_not_dropped() -> None:
    found = conversation(
        {
            "gen_ai.input.messages": "[not json",
            "gen_ai.output.messages": json.dumps([42, {"role": "assistant", "parts": "not a list"}]),
        }
    )
    assert found.input[0].text == "[not json"
    assert found.output[0].text == "42"
    assert readable("{broken") == "{broken"
    assert readable("x" * 50, limit=10).startswith("x" * 10) and "40 more characters" in readable("x" * 50, limit=10)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
keys = st.sampled_from(
    [
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.system_instructions",
        "gen_ai.prompt.0.content",
        "gen_ai.prompt.0.tool_calls.0.arguments",
        "gen_ai.completion.1.role",
        "llm.input_messages.0.message.content",
        "llm.output_messages.0.message.contents.0.message_content.type",
        "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments",
        "input.value",
        "output.value",
    ]
)


@given(st.dictionaries(keys, json_values | json_values.map(json.dumps), max_size=6))
def test_any_attribute_values_read_without_error(attributes) -> None:  # noqa: ANN001
    found = conversation(attributes, [{"name": "gen_ai.choice", "attributes": attributes}])
    for message in found.input + found.output:
        assert isinstance(message.role, str)
        assert all(isinstance(p.text, str) for p in message.parts)
    tool_io(attributes)


@pytest.mark.parametrize("value", [None, "", [], {}])
def test_empty_attributes_mean_no_messages(value) -> None:  # noqa: ANN001
    assert not conversation({"gen_ai.input.messages": value, "gen_ai.output.messages": value})
