"""A span's prompt and completion as a conversation, and a tool call's arguments and result, read
from whichever attributes the agent's instrumentation wrote:

* GenAI semantic conventions: ``gen_ai.input.messages`` / ``gen_ai.output.messages`` (messages
  made of typed parts) and ``gen_ai.system_instructions``, as JSON text or as structured values;
  OpenAI-style messages (``content`` and ``tool_calls``) in the same attributes are read too;
* the deprecated flattened attributes OpenLLMetry still emits: ``gen_ai.prompt.N.role`` /
  ``.content`` / ``.tool_calls.M.name`` …, ``gen_ai.completion.N.*``;
* OpenInference: ``llm.input_messages.N.message.role`` / ``.content`` / ``.contents.M.…`` /
  ``.tool_calls.M.tool_call.function.name`` …, ``llm.output_messages.N.*``;
* when none of these is present, ``input.value`` / ``output.value`` (OpenInference) as one input
  and one output message.

Nothing here trusts the shape it is given: a value of the wrong type is shown as it is rather than
dropped, and a malformed attribute never raises.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MAX_CHARS = 20_000
_INDEXED = re.compile(r"^(\d+)\.(.+)$")


@dataclass(frozen=True)
class Part:
    kind: str  # text | tool_call | tool_result | reasoning | media | other
    text: str = ""  # the text, or the arguments / result / value as readable JSON
    name: str = ""  # a tool call's tool
    call_id: str = ""


@dataclass(frozen=True)
class Message:
    role: str
    parts: tuple[Part, ...]
    finish_reason: str = ""
    name: str = ""

    @property
    def text(self) -> str:
        return "\n".join(p.text for p in self.parts if p.kind == "text")


@dataclass(frozen=True)
class Conversation:
    input: list[Message] = field(default_factory=list)
    output: list[Message] = field(default_factory=list)
    source: str = ""  # which convention the messages were read from

    def __bool__(self) -> bool:
        return bool(self.input or self.output)


@dataclass(frozen=True)
class ToolIO:
    name: str = ""
    call_id: str = ""
    arguments: str = ""
    result: str = ""

    def __bool__(self) -> bool:
        return bool(self.arguments or self.result)


# --- Values -----------------------------------------------------------------------------------


def readable(value: Any, limit: int = MAX_CHARS) -> str:
    """``value`` for reading: JSON (also JSON inside a string) indented, other text as it is."""
    if value is None:
        return ""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
            try:
                value = json.loads(stripped)
            except ValueError:
                return _cut(value, limit)
        else:
            return _cut(value, limit)
    return _cut(json.dumps(value, indent=2, ensure_ascii=False, default=str), limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}\n… {len(text) - limit:,} more characters not shown"


def _loaded(value: Any) -> Any:
    """A JSON attribute's value: parsed when it is JSON text, else as sent."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else readable(value)


# --- GenAI semantic conventions: messages made of parts ----------------------------------------


def _part(raw: Any) -> Part:
    if not isinstance(raw, dict):
        return Part("text", _text(raw))
    kind = str(raw.get("type", ""))
    if kind == "text" or (not kind and ("content" in raw or "text" in raw)):
        return Part("text", _text(raw.get("content", raw.get("text"))))
    if kind in ("tool_call", "server_tool_call", "function_call"):
        return Part(
            "tool_call",
            readable(_loaded(raw.get("arguments"))),
            name=str(raw.get("name", "")),
            call_id=str(raw.get("id", "")),
        )
    if kind in ("tool_call_response", "server_tool_call_response", "tool_result", "function_call_output"):
        return Part(
            "tool_result", readable(_loaded(raw.get("response", raw.get("result")))), call_id=str(raw.get("id", ""))
        )
    if kind in ("reasoning", "thinking"):
        return Part("reasoning", _text(raw.get("content", raw.get("text"))))
    if kind in ("blob", "file", "uri", "image", "image_url", "audio", "input_image", "input_audio"):
        where = raw.get("uri") or raw.get("file_id") or raw.get("url") or raw.get("image_url") or ""
        mime = raw.get("mime_type") or raw.get("modality") or kind
        return Part("media", f"{mime} {where}".strip() if where else f"{mime} (inline data not shown)")
    return Part("other", readable(raw))


def _openai_tool_calls(calls: Any) -> list[Part]:
    parts = []
    for call in calls if isinstance(calls, list) else []:
        if not isinstance(call, dict):
            continue
        function: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else call
        parts.append(
            Part(
                "tool_call",
                readable(_loaded(function.get("arguments"))),
                name=str(function.get("name", "")),
                call_id=str(call.get("id", "")),
            )
        )
    return parts


def _content_parts(content: Any) -> list[Part]:
    """A message's ``content``: text, or a list of typed parts (OpenAI and Anthropic style)."""
    content = _loaded(content) if isinstance(content, str) and content.strip()[:1] == "[" else content
    if content is None or content == "":
        return []
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        return [_part(p) for p in content]
    return [Part("text", _text(content))]


def _message(raw: Any, default_role: str) -> Message:
    if not isinstance(raw, dict):
        return Message(default_role, (Part("text", _text(raw)),))
    parts: list[Part] = []
    if isinstance(raw.get("parts"), list):
        parts = [_part(p) for p in raw["parts"]]
    else:
        parts = _content_parts(raw.get("content"))
        parts += _openai_tool_calls(raw.get("tool_calls"))
        if raw.get("tool_call_id") and parts and all(p.kind == "text" for p in parts):
            parts = [Part("tool_result", readable(_loaded(p.text)), call_id=str(raw["tool_call_id"])) for p in parts]
    role = str(raw.get("role") or default_role)
    return Message(role, tuple(parts), str(raw.get("finish_reason") or ""), str(raw.get("name") or ""))


def _messages(value: Any, default_role: str) -> list[Message]:
    value = _loaded(value)
    if value is None or value == "" or value == {} or value == []:
        return []
    if isinstance(value, dict):
        value = value.get("messages", [value])
    if not isinstance(value, list):
        return [Message(default_role, (Part("text", _text(value)),))]
    return [_message(m, default_role) for m in value]


def _semconv(attributes: dict[str, Any]) -> Conversation:
    inputs = _messages(attributes.get("gen_ai.input.messages"), "user")
    outputs = _messages(attributes.get("gen_ai.output.messages"), "assistant")
    instructions = _loaded(attributes.get("gen_ai.system_instructions"))
    if instructions:
        parts = (
            [_part(p) for p in instructions] if isinstance(instructions, list) else [Part("text", _text(instructions))]
        )
        inputs.insert(0, Message("system", tuple(parts)))
    return Conversation(inputs, outputs, "gen_ai.input.messages / gen_ai.output.messages")


# --- Flattened attributes: gen_ai.prompt.N.* and llm.input_messages.N.* -----------------------


def _indexed(attributes: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``{prefix}{N}.{rest}`` attributes grouped per N (in N order) as ``{rest: value}``."""
    grouped: dict[int, dict[str, Any]] = defaultdict(dict)
    for key, value in attributes.items():
        if not key.startswith(prefix):
            continue
        match = _INDEXED.match(key[len(prefix) :])
        if match:
            grouped[int(match.group(1))][match.group(2)] = value
    return [grouped[n] for n in sorted(grouped)]


def _flat_tool_calls(fields: dict[str, Any], prefix: str, name: str, arguments: str, call_id: str) -> list[Part]:
    calls = _indexed(fields, prefix)
    return [
        Part(
            "tool_call",
            readable(_loaded(c.get(arguments))),
            name=str(c.get(name, "")),
            call_id=str(c.get(call_id, "")),
        )
        for c in calls
    ]


def _openllmetry_message(fields: dict[str, Any], default_role: str) -> Message:
    parts = _content_parts(fields.get("content"))
    parts += _flat_tool_calls(fields, "tool_calls.", "name", "arguments", "id")
    if fields.get("function_call.name"):
        parts.append(
            Part(
                "tool_call",
                readable(_loaded(fields.get("function_call.arguments"))),
                name=str(fields["function_call.name"]),
            )
        )
    if fields.get("tool_call_id") and parts and all(p.kind == "text" for p in parts):
        parts = [Part("tool_result", readable(_loaded(p.text)), call_id=str(fields["tool_call_id"])) for p in parts]
    return Message(str(fields.get("role") or default_role), tuple(parts), str(fields.get("finish_reason") or ""))


def _openinference_message(fields: dict[str, Any], default_role: str) -> Message:
    parts = _content_parts(fields.get("message.content"))
    for content in _indexed(fields, "message.contents."):
        kind = content.get("message_content.type", "text")
        if kind == "text":
            parts.append(Part("text", _text(content.get("message_content.text"))))
        elif kind == "image":
            parts.append(Part("media", f"image {content.get('message_content.image.image.url', '')}".strip()))
        else:
            parts.append(Part("other", readable(content)))
    parts += _flat_tool_calls(
        fields,
        "message.tool_calls.",
        "tool_call.function.name",
        "tool_call.function.arguments",
        "tool_call.id",
    )
    if fields.get("message.tool_call_id") and parts and all(p.kind == "text" for p in parts):
        parts = [
            Part("tool_result", readable(_loaded(p.text)), call_id=str(fields["message.tool_call_id"])) for p in parts
        ]
    return Message(
        str(fields.get("message.role") or default_role), tuple(parts), name=str(fields.get("message.name") or "")
    )


# --- Events of the older conventions ----------------------------------------------------------

EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _from_events(events: list[Any]) -> Conversation:
    inputs: list[Message] = []
    outputs: list[Message] = []
    for event in events:
        if not isinstance(event, dict):
            continue
        name, attributes = event.get("name", ""), event.get("attributes") or {}
        if name in EVENT_ROLES:
            inputs.append(_message({"role": EVENT_ROLES[name], **attributes}, EVENT_ROLES[name]))
        elif name == "gen_ai.choice":
            message = attributes.get("message", attributes)
            outputs.append(_message(_loaded(message) if isinstance(message, str) else message, "assistant"))
        elif name == "gen_ai.content.prompt" and "gen_ai.prompt" in attributes:
            inputs += _messages(attributes["gen_ai.prompt"], "user")
        elif name == "gen_ai.content.completion" and "gen_ai.completion" in attributes:
            outputs += _messages(attributes["gen_ai.completion"], "assistant")
    return Conversation(inputs, outputs, "gen_ai events")


# --- Entry points -----------------------------------------------------------------------------


def conversation(attributes: dict[str, Any], events: list[Any] | None = None) -> Conversation:
    """The span's prompt and completion, from the first convention that has them."""
    if "gen_ai.input.messages" in attributes or "gen_ai.output.messages" in attributes:
        found = _semconv(attributes)
        if found:
            return found
    prompts = _indexed(attributes, "gen_ai.prompt.")
    completions = _indexed(attributes, "gen_ai.completion.")
    if prompts or completions:
        return Conversation(
            [_openllmetry_message(m, "user") for m in prompts],
            [_openllmetry_message(m, "assistant") for m in completions],
            "gen_ai.prompt.N / gen_ai.completion.N",
        )
    inputs = _indexed(attributes, "llm.input_messages.")
    outputs = _indexed(attributes, "llm.output_messages.")
    if inputs or outputs:
        return Conversation(
            [_openinference_message(m, "user") for m in inputs],
            [_openinference_message(m, "assistant") for m in outputs],
            "llm.input_messages / llm.output_messages",
        )
    if events:
        found = _from_events(events)
        if found:
            return found
    if "input.value" in attributes or "output.value" in attributes:
        return Conversation(
            _value_message(attributes.get("input.value"), "input"),
            _value_message(attributes.get("output.value"), "output"),
            "input.value / output.value",
        )
    return Conversation()


def _value_message(value: Any, role: str) -> list[Message]:
    if value is None or value == "":
        return []
    return [Message(role, (Part("text", readable(value)),))]


def tool_io(attributes: dict[str, Any]) -> ToolIO:
    """A tool call's arguments and result, from the GenAI conventions, OpenInference or Traceloop."""
    arguments = attributes.get("gen_ai.tool.call.arguments")
    result = attributes.get("gen_ai.tool.call.result")
    if arguments is None and result is None:
        arguments = attributes.get("input.value", attributes.get("traceloop.entity.input"))
        result = attributes.get("output.value", attributes.get("traceloop.entity.output"))
    name = attributes.get("gen_ai.tool.name") or attributes.get("tool.name") or ""
    call_id = attributes.get("gen_ai.tool.call.id") or attributes.get("tool_call.id") or ""
    return ToolIO(str(name), str(call_id), readable(arguments), readable(result))
