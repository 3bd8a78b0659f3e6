"""A trace told as plain-language steps, for people who do not read spans (no LLM involved).

``narrate(trace, spans)`` turns the spans of one trace into short sentences in time order:
"read ticket T-1042 → asked gpt-4o to decide (1,234 tokens) → decided to refund €80
(confidence 0.62) → approval required by policy refunds-over-50 → approved by dana after
4 min → issued refund of €80 for ticket T-1042 → finished successfully".

What each span means is read from its type (``traces.semconv``) and its attributes: Cockpit's
own runtime (``fleet.telemetry``: ``cockpit.decision.*``, ``cockpit.approval.*``, operator
events), the GenAI semantic conventions, OpenInference, and plain OpenTelemetry (HTTP, database
and RPC spans). Spans that only give the work its shape (a LangGraph node, a chain) are not told
unless they failed on their own. A run's history (``fleet.RunEvent``) fills in what its spans
lack: who decided an approval and after how long, and operator actions whose span never arrived.

Repeated steps fold into one sentence with ``repeat`` (× N): the same action in a row, and
loops of two or three steps ("asked gpt-4o → searched the docs" × 12). Retries fold too: a tool
call that failed and was called again with the same arguments is one sentence saying so.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from fleet.templatetags.fleet_format import usd
from traces.models import Span, StatusCode, Trace, TraceStatus
from traces.semconv import SpanType

if TYPE_CHECKING:
    from fleet.models import RunEvent

MAX_SENTENCES = 400  # beyond this (after folding), the middle of the story is summarised
KEEP_HEAD, KEEP_TAIL = 250, 100
DETAIL_CHARS = 280
VALUE_CHARS = 48


@dataclass(frozen=True)
class Sentence:
    at: datetime
    text: str  # "approved by Dana after 4 min"
    kind: str  # start / read / tool / llm / decide / approval / operator / error / outcome / other
    span_id: str = ""  # the span it was told from (the trace view links to it)
    detail: str = ""  # a line under the sentence: the reasoning, the reason, the error
    repeat: int = 1  # "× N" when similar steps were folded into one sentence
    tone: str = ""  # "ok", "warn" or "danger": how the step went, for colour
    offset: float | None = None  # seconds since the trace started
    actor: str = ""  # the person (or component) who acted, when a person did


# --- Reading attributes -------------------------------------------------------------------------


def _json(value: Any) -> Any:
    """A JSON-encoded attribute decoded; anything else as it is."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _dict(value: Any) -> dict[str, Any]:
    decoded = _json(value)
    return decoded if isinstance(decoded, dict) else {}


def _clip(text: Any, limit: int = DETAIL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None


def _tokens(span: Span) -> int:
    return (span.input_tokens or 0) + (span.output_tokens or 0)


def _error_of(span: Span) -> str:
    """What went wrong, in a few words: "TimeoutError: upstream", "rate limited"."""
    message = span.status_message.strip()
    if not message:
        for event in span.events or []:
            if isinstance(event, dict) and event.get("name") == "exception":
                message = str((event.get("attributes") or {}).get("exception.message", ""))
                break
    kind = span.error_type.strip()
    if re.match(r"[A-Z]\w*(Error|Exception|Timeout)\b", message):
        kind = ""  # the message names its error already
    if kind and message and not message.startswith(kind):
        return _clip(f"{kind}: {message}", 160)
    return _clip(message or kind or "an error", 160)


# --- Wording --------------------------------------------------------------------------------

CURRENCIES = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥", "CHF": "CHF "}


def money(amount: Any, currency: Any = "") -> str:
    """ "80", "EUR" → "€80"; "80.5", "usd" → "$80.5"; "12", "" → "12"."""
    text = str(amount).strip()
    code = str(currency or "").strip().upper()
    number = _number(text)
    if number is not None and abs(number) >= 1000:
        text = f"{number:,}"
    if code in CURRENCIES:
        return f"{CURRENCIES[code]}{text}"
    return f"{text} {code}" if code else text


def duration(seconds: float) -> str:
    """42 → "42 s"; 240 → "4 min"; 7500 → "2 h 5 min"; 0.3 → "less than a second"."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _words(identifier: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", identifier)
    return [w.lower() for w in re.split(r"[\s_\-]+", spaced) if w]


# verb -> (past tense, preposition that names the system when the verb has no object)
VERBS: dict[str, tuple[str, str]] = {
    "get": ("looked up", ""),
    "fetch": ("looked up", ""),
    "read": ("read", ""),
    "load": ("loaded", ""),
    "retrieve": ("retrieved", ""),
    "lookup": ("looked up", ""),
    "find": ("looked for", ""),
    "search": ("searched", ""),
    "query": ("queried", ""),
    "list": ("listed", ""),
    "check": ("checked", ""),
    "validate": ("checked", ""),
    "verify": ("verified", ""),
    "send": ("sent", ""),
    "email": ("emailed", ""),
    "notify": ("notified", ""),
    "reply": ("replied", "on"),
    "create": ("created", "in"),
    "add": ("added", "to"),
    "update": ("updated", "in"),
    "set": ("set", ""),
    "edit": ("edited", ""),
    "delete": ("deleted", "from"),
    "remove": ("removed", "from"),
    "post": ("posted", "to"),
    "write": ("wrote", "to"),
    "save": ("saved", "to"),
    "upload": ("uploaded", "to"),
    "download": ("downloaded", "from"),
    "publish": ("published", "to"),
    "refund": ("issued refund", ""),
    "pay": ("paid", ""),
    "charge": ("charged", ""),
    "transfer": ("transferred", ""),
    "cancel": ("cancelled", ""),
    "close": ("closed", ""),
    "open": ("opened", ""),
    "approve": ("approved", ""),
    "reject": ("rejected", ""),
    "escalate": ("escalated", ""),
    "assign": ("assigned", ""),
    "book": ("booked", ""),
    "schedule": ("scheduled", ""),
    "submit": ("submitted", "to"),
    "reverse": ("reversed", ""),
    "undo": ("undid", ""),
    "run": ("ran", ""),
    "execute": ("ran", ""),
    "call": ("called", ""),
    "invoke": ("called", ""),
    "summarize": ("summarised", ""),
    "summarise": ("summarised", ""),
    "extract": ("extracted", "from"),
    "classify": ("classified", ""),
    "translate": ("translated", ""),
    "generate": ("generated", ""),
    "calculate": ("calculated", ""),
    "compute": ("computed", ""),
    "review": ("reviewed", ""),
    "analyze": ("analysed", ""),
    "analyse": ("analysed", ""),
    "parse": ("parsed", ""),
    "merge": ("merged", ""),
    "deploy": ("deployed", ""),
    "browse": ("browsed", ""),
    "scrape": ("scraped", ""),
    "crawl": ("crawled", ""),
    "route": ("routed", ""),
}
# the verb as an infinitive, where it is not the verb itself ("could not issue refund …")
INFINITIVES = {
    "get": "look up",
    "fetch": "look up",
    "lookup": "look up",
    "find": "look for",
    "refund": "issue refund",
    "validate": "check",
    "execute": "run",
    "invoke": "call",
}
# verbs that win when they end a name whose first word is a verb too ("refund_reverse")
SUFFIX_VERBS = {"reverse", "undo", "revert", "rollback", "cancel", "create", "update", "delete"}
READ_VERBS = {"get", "fetch", "read", "load", "retrieve", "lookup", "find", "search", "query", "list", "check"}
READ_VERBS |= {"validate", "verify", "browse", "scrape", "crawl"}
# nouns one *reads* rather than looks up ("read ticket T-1", "looked up weather for Paris")
DOCUMENTS = {"ticket", "invoice", "diff", "document", "doc", "file", "email", "message", "record", "page"}
DOCUMENTS |= {"article", "policy", "contract", "note", "report", "issue", "comment", "thread", "profile", "mail"}
MONEY_VERBS = {"refund", "pay", "charge", "transfer", "post"}
AMOUNT_KEYS = ("amount", "total", "price", "sum", "value")
CURRENCY_KEYS = ("currency", "currency_code", "ccy")
# arguments that say what a call was for, in the order they are tried
TARGET_KEYS = (
    ("to", "to"),
    ("recipient", "to"),
    ("email", "to"),
    ("query", "for"),
    ("q", "for"),
    ("question", "for"),
    ("search", "for"),
    ("term", "for"),
    ("keyword", "for"),
    ("topic", "on"),
    ("city", "for"),
    ("location", "for"),
    ("url", "at"),
    ("path", "at"),
    ("repository", "in"),
    ("repo", "in"),
)
ENTITY_KEYS = {"ticket", "order", "invoice", "issue", "customer", "user", "account", "pull_request", "document"}


@functools.lru_cache(maxsize=1024)
def _noun_of(key: str) -> str:
    """ "ticket" for ``ticket_id``, "pull request" for ``pull_request``; "" for other keys."""
    lowered = key.lower()
    for suffix in ("_id", "_ref", "_number", "_no", "id", "ref"):
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            return " ".join(_words(lowered[: -len(suffix)].rstrip("_")))
    return " ".join(_words(lowered)) if lowered in ENTITY_KEYS else ""


def _identifier_of(key: str, value: Any) -> tuple[str, str] | None:
    """("ticket", "ticket T-1042") for ``ticket_id="T-1042"``; None for other arguments."""
    if isinstance(value, (dict, list)) or value is None or value == "":
        return None
    noun = _noun_of(key)
    if not noun:
        return None
    text = _clip(value, VALUE_CHARS)
    mark = "#" if text.isdigit() else ""
    return noun, f"{noun} {mark}{text}"


@dataclass
class Phrase:
    """A call told in words, with what changes between calls of the same kind kept apart."""

    base: str  # "looked up order"
    specific: str = ""  # "#123"
    extra: str = ""  # "for Paris", "of €80"
    reads: bool = False
    infinitive: str = ""  # "look up order"

    @property
    def text(self) -> str:
        return " ".join(p for p in (self.base, self.specific, self.extra) if p)

    @property
    def attempt(self) -> str:
        """ "look up order #123": what was tried, for "could not …"."""
        return " ".join(p for p in (self.infinitive or self.base, self.specific, self.extra) if p)


@functools.lru_cache(maxsize=2048)
def _parse_name(name: str) -> tuple[list[str], str, list[str], str]:
    """A tool name's words, its verb (or ""), the words of its object, and the system it
    belongs to: "crm.get_ticket" → (["get", "ticket"], "get", ["ticket"], "crm")."""
    parts = [p for p in re.split(r"[./:]", name) if p]
    action = parts[-1] if parts else name
    system = " ".join(_words(parts[-2])) if len(parts) > 1 else ""
    words = _words(action)
    if len(words) > 1 and words[0] == "look" and words[1] == "up":
        words = ["lookup", *words[2:]]
    if len(words) > 1 and words[-1] in SUFFIX_VERBS:  # "refund_reverse", "ticket_create"
        return words, words[-1], words[:-1], system
    if words and words[0] in VERBS:
        return words, words[0], words[1:], system
    if len(words) > 1 and words[-1] in VERBS:
        return words, words[-1], words[:-1], system
    return words, "", words, system


def humanise_call(name: str, args: dict[str, Any] | None = None) -> Phrase:
    """A tool or function call in plain words: ``lookup_order(order_id=123)`` → "looked up
    order #123"; ``payments.refund(amount=80, currency="EUR", ticket_id="T-1")`` → "issued
    refund of €80 for ticket T-1"; an unknown verb → "used <name>"."""
    args = args or {}
    words, verb, obj_words, system = _parse_name(name)
    obj = " ".join(obj_words)
    ids = [found for key, value in args.items() if (found := _identifier_of(key, value))]
    specific = ""
    rest: list[str] = []
    for noun, phrase in ids:
        if obj and not specific and (noun == obj or noun.endswith(obj) or obj.endswith(noun)):
            specific = phrase[len(noun) + 1 :]
        else:
            rest.append(phrase)
    extras: list[str] = []
    amount_key = next((k for k in AMOUNT_KEYS if k in args and _number(args[k]) is not None), None)
    currency = next((args[k] for k in CURRENCY_KEYS if k in args), "")
    if amount_key and (verb in MONEY_VERBS or currency):
        extras.append(f"of {money(args[amount_key], currency)}")
    if rest:
        extras.append(f"for {rest[0]}")
    else:
        for key, preposition in TARGET_KEYS:
            value = args.get(key)
            if value not in (None, "") and not isinstance(value, (dict, list)):
                shown = _clip(value, VALUE_CHARS)
                quoted = f"“{shown}”" if key in ("query", "q", "question", "search", "term", "keyword") else shown
                extras.append(f"{preposition} {quoted}")
                break
    if not verb:
        label = " ".join(words) or name
        return Phrase(base=f"used {label}", specific=specific, extra=" ".join(extras), infinitive=f"use {label}")
    past, preposition = VERBS[verb]
    infinitive = INFINITIVES.get(verb, verb)
    if verb in ("get", "fetch") and (obj_words[-1:] and obj_words[-1] in DOCUMENTS):
        past = infinitive = "read"
    if not obj and system:
        if verb == "refund":
            obj = ""
        elif preposition:
            extras.insert(0, f"{preposition} {system}")
        else:
            obj = system
    base = f"{past} {obj}".strip()
    return Phrase(
        base=base,
        specific=specific,
        extra=" ".join(extras),
        reads=verb in READ_VERBS,
        infinitive=f"{infinitive} {obj}".strip(),
    )


# --- Telling spans --------------------------------------------------------------------------


@dataclass
class _Told:
    """A sentence being built, with what folding needs to know."""

    at: datetime
    text: str
    kind: str
    span_id: str = ""
    detail: str = ""
    tone: str = ""
    actor: str = ""
    group: tuple[Any, ...] | None = None  # sentences with the same group may fold together
    base: str = ""  # the text without what differs between members of a group
    specific: str = ""
    tokens: int = 0
    repeat: int = 1
    members: list[_Told] = field(default_factory=list)


def _tool_args(span: Span) -> dict[str, Any]:
    attributes = span.attributes or {}
    for key in ("gen_ai.tool.call.arguments", "input.value", "tool.parameters", "tool.arguments"):
        if key in attributes:
            found = _dict(attributes[key])
            if found:
                return found
    return {}


def _tool_sentence(span: Span) -> _Told:
    attributes = span.attributes or {}
    name = span.tool_name or span.name.removeprefix("execute_tool ")
    phrase = humanise_call(name, _tool_args(span))
    attempts = attributes.get("cockpit.attempts")
    retries = attempts - 1 if isinstance(attempts, int) and attempts > 1 else 0
    told = _Told(
        at=span.start_time,
        text=phrase.text,
        kind="read" if phrase.reads else "tool",
        span_id=span.span_id,
        group=("tool", name),
        base=phrase.base,
        specific=" ".join(p for p in (phrase.specific, phrase.extra) if p),
    )
    compensates = attributes.get("cockpit.compensates_step")
    if compensates is not None:
        told.text = f"{phrase.text} (undoing step {compensates})"
        told.group = None
        told.tone = "warn"
    if span.status_code == StatusCode.ERROR:
        error = _error_of(span)
        if error.startswith("forbidden by policy"):
            told.text = f"was stopped from acting: {name} is {error}"
            told.kind, told.tone = "error", "danger"
        else:
            told.text = f"could not {phrase.attempt}" + (f", retried {retries}×" if retries else "")
            told.detail = error
            told.kind, told.tone = "error", "danger"
        told.group = None
    elif retries:
        told.text = f"{told.text} after {retries} failed attempt{'s' if retries > 1 else ''}"
        told.tone = "warn"
        told.group = None
    return told


def _output_tool_calls(attributes: dict[str, Any]) -> list[str]:
    """Names of the tools a model asked for in its answer (GenAI parts, OpenInference keys)."""
    names: list[str] = []
    messages = _json(attributes.get("gen_ai.output.messages"))
    if isinstance(messages, list):
        for message in messages:
            for part in (message or {}).get("parts", []) if isinstance(message, dict) else []:
                if isinstance(part, dict) and part.get("type") == "tool_call" and part.get("name"):
                    names.append(str(part["name"]))
    for key, value in attributes.items():
        if key.startswith("llm.output_messages.") and key.endswith("tool_call.function.name") and value:
            names.append(str(value))
    return list(dict.fromkeys(names))


def _llm_sentence(span: Span) -> _Told:
    attributes = span.attributes or {}
    model = span.model or "a model"
    purpose = str(attributes.get("cockpit.step.name") or "")
    simulated = attributes.get("cockpit.simulated") is True or span.provider == "simulated"
    tokens = _tokens(span)
    base = f"asked {model}" + (f" to {purpose}" if purpose else "")
    told = _Told(
        at=span.start_time,
        text=base,
        kind="llm",
        span_id=span.span_id,
        group=("llm", model, purpose),
        base=base,
        tokens=tokens,
    )
    calls = _output_tool_calls(attributes)
    if calls:
        told.detail = "it proposed calling " + ", ".join(calls[:3]) + (" …" if len(calls) > 3 else "")
    if simulated:
        told.detail = "; ".join(d for d in ("answered by the simulated provider", told.detail) if d)
    attempts = attributes.get("cockpit.attempts")
    retries = attempts - 1 if isinstance(attempts, int) and attempts > 1 else 0
    if span.status_code == StatusCode.ERROR:
        told.text = f"could not get an answer from {model}" + (f", retried {retries}×" if retries else "")
        told.detail = _error_of(span)
        told.kind, told.tone, told.group = "error", "danger", None
    elif retries:
        told.detail = "; ".join(d for d in (f"after {retries} failed attempt(s)", told.detail) if d)
        told.tone, told.group = "warn", None
    return told


def _decision_sentence(span: Span) -> _Told:
    attributes = span.attributes or {}
    output = _dict(attributes.get("cockpit.decision.output"))
    name = str(attributes.get("cockpit.step.name") or span.name.removeprefix("decision "))
    choice = str(output.get("choice") or _dict(attributes.get("cockpit.decision.input")).get("choice") or name)
    data = _dict(output.get("data"))
    text = f"decided to {choice}"
    amount_key = next((k for k in AMOUNT_KEYS if k in data), None)
    if amount_key is not None:
        amount = _number(data[amount_key])
        if amount is None or amount != 0:
            currency = next((data[k] for k in CURRENCY_KEYS if k in data), "")
            text += f" {money(data[amount_key], currency)}"
    confidence = _number(output.get("confidence"))
    if confidence is not None:
        text += f" (confidence {confidence.normalize():f})"
    return _Told(
        at=span.start_time,
        text=text,
        kind="decide",
        span_id=span.span_id,
        detail=_clip(output.get("reasoning") or ""),
        tone="warn" if confidence is not None and confidence < Decimal("0.7") else "",
    )


def _policy_words(policy: str, reason: str) -> str:
    if not policy or policy == "agent":
        return "the agent asked for a human decision"
    if re.fullmatch(r"tier \d", policy):
        return f"approval required: a {policy} agent needs a human for this"
    if policy == "(no permit)":
        return "approval required: no policy lets the agent do this on its own"
    return f"approval required by policy {policy}"


def _approval_sentences(span: Span, event: RunEvent | None) -> list[_Told]:
    attributes = span.attributes or {}
    request = _dict(attributes.get("cockpit.approval.input"))
    outcome = _dict(attributes.get("cockpit.approval.output"))
    action = _dict(request.get("action"))
    asked = ""
    if action.get("tool"):
        phrase = humanise_call(str(action["tool"]), _dict(action.get("args")))
        asked = " ".join(p for p in (str(action["tool"]), phrase.specific, phrase.extra) if p)
    policy = str(request.get("policy") or "")
    why = str(request.get("policy_reason") or "")
    if why in (f"a human must decide ({policy})", "the agent asked for a human decision"):
        why = ""  # the sentence says it already
    first = _Told(
        at=span.start_time,
        text=_policy_words(policy, why),
        kind="approval",
        span_id=span.span_id,
        detail=" — ".join(d for d in (f"the action: {asked}" if asked else "", _clip(why)) if d),
        tone="warn",
    )
    decided_by = str(outcome.get("decided_by") or (event.actor_label if event is not None else ""))
    approved = outcome.get("approved")
    if approved is None and event is not None:
        approved = event.data.get("approved")
    if approved is None and not decided_by:
        if span.status_code == StatusCode.ERROR:
            approved = False
        else:
            return [first]  # no decision recorded
    waited = span.duration_us / 1_000_000
    if event is not None and isinstance(event.data.get("waited_seconds"), (int, float)):
        waited = float(event.data["waited_seconds"])
    reason = str(outcome.get("reason") or (event.reason if event is not None else "") or "")
    after = f"after {duration(waited)}" if waited >= 1 else "at once"
    if approved:
        edited = outcome.get("edited_args")
        changes = ""
        if isinstance(edited, dict) and edited:
            before = _dict(action.get("args"))
            changed = [f"{k} {before.get(k)} → {v}" for k, v in edited.items() if before.get(k) != v]
            changes = f" with changes ({', '.join(changed[:3])})" if changed else " with changes"
        text = f"approved by {decided_by or 'someone'}{changes} {after}"
        kind, tone = "approval", "ok"
        detail = "" if reason.startswith("approved by") else _clip(reason)
    elif decided_by == "escalation sweeper":
        text = f"no one decided in time — the request expired {after} and counts as rejected"
        kind, tone, detail = "error", "danger", _clip(reason)
    else:
        text = f"rejected by {decided_by or 'someone'} {after}"
        kind, tone, detail = "error", "danger", _clip(reason)
    second = _Told(
        at=span.end_time,
        text=text,
        kind=kind,
        span_id=span.span_id,
        detail=detail,
        tone=tone,
        actor=decided_by,
    )
    return [first, second]


OPERATOR_WORDS = {
    "pause": "paused by {who}",
    "resume": "resumed by {who}",
    "cancel": "cancelled by {who}",
    "quarantine": "agent quarantined by {who}",
}


def _override_text(who: str, changes: dict[str, Any]) -> str:
    shown = [
        f"{key} → {money(value, 'USD') if key == 'budget' else _clip(value, VALUE_CHARS)}"
        for key, value in changes.items()
        if key != "input"
    ]
    if "input" in changes:
        shown.append("input replaced")
    if len(shown) == 1:
        key, _, value = shown[0].partition(" → ")
        return f"{key} overridden by {who} → {value}" if value else f"{key} by {who}"
    return f"overridden by {who}: {', '.join(shown)}" if shown else f"overridden by {who}"


def _operator_sentence(span: Span) -> _Told:
    attributes = span.attributes or {}
    action = str(attributes.get("cockpit.operator.action") or span.name.removeprefix("operator "))
    who = str(attributes.get("cockpit.operator.actor") or "an operator")
    reason = str(attributes.get("cockpit.reason") or "")
    if action == "override":
        changes = _dict(attributes.get("cockpit.operator.data")).get("changes") or {}
        text = _override_text(who, changes if isinstance(changes, dict) else {})
    else:
        text = OPERATOR_WORDS.get(action, "{action} by {who}").format(who=who, action=action)
    default_reasons = {f"{action}d by {who}", f"paused by {who}", f"resumed by {who}"}
    return _Told(
        at=span.start_time,
        text=text,
        kind="operator",
        span_id=span.span_id,
        detail="" if reason in default_reasons else _clip(reason),
        tone="warn" if action in ("pause", "cancel", "override", "quarantine") else "",
        actor=who,
    )


STATUS_WORDS = {"paused": "paused by {who}", "cancelled": "cancelled by {who}", "running": "resumed by {who}"}


def _event_action(event: RunEvent) -> str | None:
    """The operator action a run event records ("pause", "resume", "cancel", "override"), if
    a person took it."""
    data = event.data or {}
    if event.kind == "directive":
        return {"continue": "resume"}.get(str(data.get("directive")), str(data.get("directive") or "")) or None
    if event.kind == "override":
        return "override"
    if event.kind == "status" and data.get("carries_out"):
        return None  # a requested pause or cancellation taking effect: the request is the action
    if event.kind == "status" and event.actor_user_id is not None and event.to_status in STATUS_WORDS:
        if event.to_status == "running" and event.from_status != "paused":
            return None
        return {"paused": "pause", "cancelled": "cancel", "running": "resume"}[event.to_status]
    return None


def _event_sentence(event: RunEvent) -> _Told | None:
    """An operator action known from the run's history only (its span never arrived)."""
    data = event.data or {}
    if event.kind == "status":
        if _event_action(event) is None:
            return None
        text = STATUS_WORDS[event.to_status].format(who=event.actor_label)
    elif event.kind == "directive":
        directive = data.get("directive")
        words = {"pause": "pause requested by {who}", "cancel": "cancelled by {who}", "continue": "resumed by {who}"}
        if directive not in words:
            return None
        text = words[str(directive)].format(who=event.actor_label)
    elif event.kind == "override":
        text = _override_text(event.actor_label, _dict(data.get("after")))
    else:
        return None
    reason = "" if event.reason.endswith(f"by {event.actor_label}") else event.reason  # a default reason
    return _Told(at=event.at, text=text, kind="operator", detail=_clip(reason), tone="warn", actor=event.actor_label)


def _retrieval_sentence(span: Span) -> _Told:
    attributes = span.attributes or {}
    documents = {key.split(".")[2] for key in attributes if key.startswith("retrieval.documents.")}
    query = attributes.get("input.value") or attributes.get("gen_ai.retrieval.query")
    text = "searched the knowledge base"
    if isinstance(query, str) and query and query[:1] not in "{[":
        text += f" for “{_clip(query, VALUE_CHARS)}”"
    if documents:
        text += f" ({len(documents)} document{'s' if len(documents) != 1 else ''} found)"
    told = _Told(at=span.start_time, text=text, kind="read", span_id=span.span_id, group=("retrieval",), base=text)
    if span.status_code == StatusCode.ERROR:
        told.text, told.kind, told.tone, told.group = f"{text} — failed", "error", "danger", None
        told.detail = _error_of(span)
    return told


def _generic_sentence(span: Span) -> _Told | None:
    """Plain OpenTelemetry: HTTP, database and RPC client spans, and named units of work."""
    attributes = span.attributes or {}
    method = attributes.get("http.request.method") or attributes.get("http.method")
    text = ""
    if method:
        where = attributes.get("url.full") or attributes.get("http.url") or attributes.get("http.route") or ""
        where = re.sub(r"^https?://", "", str(where)).split("?")[0]
        status = attributes.get("http.response.status_code") or attributes.get("http.status_code")
        text = f"called {method} {_clip(where, 60)}".rstrip() + (f" → {status}" if status else "")
    elif attributes.get("db.system") or attributes.get("db.system.name"):
        system = attributes.get("db.system") or attributes.get("db.system.name")
        operation = attributes.get("db.operation.name") or attributes.get("db.operation") or ""
        table = attributes.get("db.collection.name") or attributes.get("db.sql.table") or ""
        text = f"queried {system}" + (f": {operation}" if operation else "") + (f" {table}" if table else "")
    elif attributes.get("rpc.method"):
        text = f"called {attributes.get('rpc.service', '')}.{attributes['rpc.method']}".replace(" .", " ")
    elif re.fullmatch(r"[A-Za-z][\w.:/-]*", span.name) and span.name.lower() not in ("root", "main", "span"):
        phrase = humanise_call(span.name)
        text = phrase.text if not phrase.base.startswith("used ") else f"ran {span.name}"
    else:
        text = f"ran “{_clip(span.name, 60)}”"
    told = _Told(at=span.start_time, text=text, kind="other", span_id=span.span_id, group=("other", text), base=text)
    if span.status_code == StatusCode.ERROR:
        told.text, told.kind, told.tone, told.group = f"{text} — failed: {_error_of(span)}", "error", "danger", None
    return told


# --- Folding ----------------------------------------------------------------------------------


def _same_call(a: _Told, b: _Told) -> bool:
    return a.group is not None and a.group == b.group and a.specific == b.specific


def _fold_retries(told: list[_Told], spans_by_id: dict[str, Span]) -> list[_Told]:
    """A failed tool call followed by the same call again is one sentence: "… — failed once
    (TimeoutError), then succeeded" or "… failed: …, retried 2×"."""
    out: list[_Told] = []
    i = 0
    while i < len(told):
        current = told[i]
        span = spans_by_id.get(current.span_id)
        if current.kind != "error" or span is None or span.span_type != SpanType.TOOL:
            out.append(current)
            i += 1
            continue
        key = (span.tool_name, json.dumps(_tool_args(span), sort_keys=True, default=str))
        j = i + 1
        while j < len(told):
            following = spans_by_id.get(told[j].span_id)
            if following is None or following.span_type != SpanType.TOOL:
                break
            if (following.tool_name, json.dumps(_tool_args(following), sort_keys=True, default=str)) != key:
                break
            j += 1
            if following.status_code != StatusCode.ERROR:
                break
        attempts = told[i:j]
        if len(attempts) == 1:
            out.append(current)
            i += 1
            continue
        last = spans_by_id[attempts[-1].span_id]
        failures = [spans_by_id[t.span_id] for t in attempts if spans_by_id[t.span_id].status_code == StatusCode.ERROR]
        phrase = humanise_call(span.tool_name or span.name, _tool_args(span))
        if last.status_code != StatusCode.ERROR:
            count = len(failures)
            text = f"{phrase.text} after {count} failed attempt{'s' if count > 1 else ''}"
            detail = f"{'it' if count == 1 else 'each'} failed with {_error_of(failures[0])}"
            kind = "read" if phrase.reads else "tool"
            out.append(
                replace(attempts[-1], at=current.at, text=text, detail=detail, kind=kind, tone="warn", group=None)
            )
        else:
            text = f"could not {phrase.attempt}, retried {len(attempts) - 1}×"
            out.append(replace(current, text=text, detail=_error_of(last), group=None))
        i = j
    return out


def _fold_repeats(told: list[_Told]) -> list[_Told]:
    """The same action in a row becomes one sentence (× N)."""
    out: list[_Told] = []
    for item in told:
        last = out[-1] if out else None
        if last is not None and item.group is not None and item.group == last.group and item.kind == last.kind:
            if not last.members:
                last.members = [replace(last)]
            last.members.append(item)
            last.repeat += 1
            last.tokens += item.tokens
            continue
        out.append(item)
    for item in out:
        if item.repeat > 1:
            specifics = list(dict.fromkeys(m.specific for m in item.members if m.specific))
            if item.kind == "llm":
                item.text = item.base
            elif len(specifics) > 1:
                item.text = f"{item.base} {_listing(specifics)}".strip()
            details = list(dict.fromkeys(m.detail for m in item.members if m.detail))
            item.detail = details[0] if len(details) == 1 else item.detail
    return out


def _listing(specifics: list[str]) -> str:
    """["for “a”", "for “b”", …] → "for “a”, “b”, “c” and 4 more" (a shared first word once)."""
    first = specifics[0].split(" ", 1)[0]
    prefix = ""
    if all(s.startswith(first + " ") for s in specifics) and first in ("for", "to", "at", "in", "on", "of"):
        prefix, specifics = first + " ", [s[len(first) + 1 :] for s in specifics]
    shown = ", ".join(specifics[:3]) + (f" and {len(specifics) - 3} more" if len(specifics) > 3 else "")
    return prefix + shown


def _fold_loops(told: list[_Told], longest: int = 3) -> list[_Told]:
    """Loops of two or three steps repeated in a row ("asked gpt-4o → searched docs" × 12)."""
    out: list[_Told] = []
    i = 0
    while i < len(told):
        folded = False
        for period in range(2, longest + 1):
            block = told[i : i + period]
            if len(block) < period or any(t.group is None for t in block):
                continue
            if len({t.group for t in block}) < period:
                continue
            times = 1
            while [t.group for t in told[i + times * period : i + (times + 1) * period]] == [t.group for t in block]:
                times += 1
            if times < 2:
                continue
            members = told[i : i + times * period]
            tokens = sum(t.tokens for t in members)
            text = " → ".join(t.base for t in block)
            out.append(
                replace(
                    block[0],
                    text=text,
                    kind=block[0].kind,
                    repeat=times,
                    tokens=tokens,
                    detail="",
                    group=None,
                    members=members,
                )
            )
            i += times * period
            folded = True
            break
        if not folded:
            out.append(told[i])
            i += 1
    return out


# --- The story --------------------------------------------------------------------------------


def _root_of(spans: Sequence[Span], trace: Trace) -> Span | None:
    if trace.root_span_id:
        for span in spans:
            if span.span_id == trace.root_span_id:
                return span
    return None


def _run_events(trace: Trace) -> list[RunEvent]:
    if trace.run_id is None:
        return []
    from fleet.models import RunEvent

    return list(RunEvent.objects.filter(run_id=trace.run_id).order_by("at", "id"))


def _start_sentence(trace: Trace, root: Span) -> _Told:
    attributes = root.attributes or {}
    who = root.agent_name or trace.agent_name or root.name.removeprefix("invoke_agent ")
    text = f"{who} started"
    detail = ""
    run_input: Any = None
    if trace.run_id is not None and trace.run is not None:
        run_input = trace.run.input
    if isinstance(run_input, dict) and run_input:
        phrase = humanise_call("handle", run_input)
        on = " ".join(p for p in (phrase.specific, phrase.extra) if p).removeprefix("for ")
        if on:
            text += f" on {on}"
        else:
            detail = _clip(", ".join(f"{k}: {v}" for k, v in run_input.items()), 160)
    else:
        value = attributes.get("input.value") or attributes.get("gen_ai.prompt")
        decoded = _json(value)
        if isinstance(decoded, str) and decoded:
            detail = f"“{_clip(decoded, 160)}”"
        elif isinstance(decoded, dict):
            phrase = humanise_call("handle", decoded)
            on = " ".join(p for p in (phrase.specific, phrase.extra) if p).removeprefix("for ")
            if on:
                text += f" on {on}"
    return _Told(at=root.start_time, text=text, kind="start", span_id=root.span_id, detail=detail)


def _outcome_sentence(trace: Trace, root: Span | None, end: datetime) -> _Told:
    if root is None or trace.status == TraceStatus.OPEN:
        return _Told(
            at=end,
            text="no outcome yet: the trace is still open (its first span has not arrived, or the work goes on)",
            kind="outcome",
            tone="warn",
        )
    attributes = root.attributes or {}
    took = duration(root.duration_us / 1_000_000)
    cost = f", {usd(trace.cost)}" if trace.cost else ""
    status = attributes.get("cockpit.run.status")
    if status == "succeeded" or (status is None and root.status_code != StatusCode.ERROR):
        return _Told(
            at=root.end_time,
            text=f"finished successfully after {took}{cost}",
            kind="outcome",
            span_id=root.span_id,
            tone="ok",
        )
    message = _error_of(root) if root.status_message or root.error_type else ""
    if status == "cancelled":
        text = f"ended as cancelled after {took}"
    elif status and status != "failed":
        text = f"ended as {str(status).replace('_', ' ')} after {took}"
    elif status == "failed":
        text = f"failed after {took}"
    else:
        text = f"ended with an error after {took}"
    return _Told(
        at=root.end_time,
        text=text,
        kind="outcome",
        span_id=root.span_id,
        detail=message,
        tone="danger",
    )


def _children(spans: Iterable[Span]) -> dict[str, list[Span]]:
    children: dict[str, list[Span]] = {}
    for span in spans:
        if span.parent_span_id:
            children.setdefault(span.parent_span_id, []).append(span)
    return children


def _has_error_below(span: Span, children: dict[str, list[Span]]) -> bool:
    stack = list(children.get(span.span_id, []))
    while stack:
        below = stack.pop()
        if below.status_code == StatusCode.ERROR:
            return True
        stack.extend(children.get(below.span_id, []))
    return False


def _tell(span: Span, root: Span | None, children: dict[str, list[Span]], parents: dict[str, Span]) -> list[_Told]:
    attributes = span.attributes or {}
    step_kind = attributes.get("cockpit.step.kind")
    kind = span.span_type
    if step_kind == "decision":
        return [_decision_sentence(span)]
    if step_kind == "checkpoint":
        name = attributes.get("cockpit.step.name") or span.name.removeprefix("checkpoint ")
        return [_Told(at=span.start_time, text=f"reached checkpoint “{name}”", kind="other", span_id=span.span_id)]
    if kind == SpanType.TOOL:
        return [_tool_sentence(span)]
    if kind == SpanType.LLM:
        return [_llm_sentence(span)]
    if kind == SpanType.OPERATOR:
        return [_operator_sentence(span)]
    if kind == SpanType.RETRIEVAL:
        return [_retrieval_sentence(span)]
    if kind == SpanType.EMBEDDING:
        parent = parents.get(span.parent_span_id)
        if parent is not None and parent.span_type == SpanType.RETRIEVAL:
            return []
        model = span.model or "a model"
        text = f"turned text into vectors with {model}"
        return [_Told(at=span.start_time, text=text, kind="other", span_id=span.span_id, group=("emb",), base=text)]
    if kind == SpanType.GUARDRAIL:
        if span.status_code == StatusCode.ERROR:
            text = f"guardrail “{span.name}” stopped it: {_error_of(span)}"
            return [_Told(at=span.start_time, text=text, kind="error", span_id=span.span_id, tone="danger")]
        text = f"guardrail “{span.name}” passed"
        return [_Told(at=span.start_time, text=text, kind="other", span_id=span.span_id, group=("g", span.name))]
    if kind == SpanType.AGENT:
        if span is root:
            return []
        who = span.agent_name or span.name.removeprefix("invoke_agent ")
        told = _Told(at=span.start_time, text=f"handed over to {who}", kind="other", span_id=span.span_id)
        if span.status_code == StatusCode.ERROR and not _has_error_below(span, children):
            told.text, told.kind, told.tone = f"{who} failed: {_error_of(span)}", "error", "danger"
        return [told]
    if span.name.lower().startswith("escalat") or "cockpit.escalation.level" in attributes:
        level = attributes.get("cockpit.escalation.level") or attributes.get("cockpit.escalation.to")
        text = f"escalated to L{level}".replace("LL", "L") if level else "escalated"
        reason = attributes.get("cockpit.reason") or span.status_message
        return [
            _Told(at=span.start_time, text=text, kind="approval", span_id=span.span_id, detail=_clip(reason or ""))
        ]
    if span is root:
        return []
    if kind == SpanType.CHAIN or children.get(span.span_id):
        # structure (a graph node, a chain): told only when it failed on its own
        if span.status_code == StatusCode.ERROR and not _has_error_below(span, children):
            text = f"{span.name} failed: {_error_of(span)}"
            return [_Told(at=span.start_time, text=text, kind="error", span_id=span.span_id, tone="danger")]
        return []
    generic = _generic_sentence(span)
    return [generic] if generic is not None else []


def narrate(trace: Trace, spans: Sequence[Span]) -> list[Sentence]:
    """The steps of ``trace`` in order. ``spans`` are all of its spans, attributes loaded."""
    ordered = sorted(spans, key=lambda s: (s.start_time, s.end_time, s.span_id))
    if not ordered:
        return []
    started = min(s.start_time for s in ordered)
    ended = max(s.end_time for s in ordered)
    root = _root_of(ordered, trace)
    children = _children(ordered)
    parents = {s.span_id: s for s in ordered}
    events = _run_events(trace)
    approvals = {e.data.get("step"): e for e in events if e.kind == "approval"}

    told: list[_Told] = []
    if root is not None:
        told.append(_start_sentence(trace, root))
    operator_seen: list[tuple[datetime, str]] = []
    for span in ordered:
        if span.span_type == SpanType.APPROVAL:
            told.extend(_approval_sentences(span, approvals.get((span.attributes or {}).get("cockpit.step.seq"))))
            continue
        sentences = _tell(span, root, children, parents)
        if span.span_type == SpanType.OPERATOR:
            operator_seen.append((span.start_time, str((span.attributes or {}).get("cockpit.operator.action", ""))))
        told.extend(sentences)
    for event in events:
        action = _event_action(event)
        if action is None:
            continue
        if any(name == action and abs((at - event.at).total_seconds()) < 5 for at, name in operator_seen):
            continue
        from_event = _event_sentence(event)
        if from_event is not None:
            told.append(from_event)
    told.sort(key=lambda t: (t.at, 0 if t.kind == "start" else 1))
    by_id = {s.span_id: s for s in ordered}
    told = _fold_retries(told, by_id)
    told = _fold_repeats(told)
    told = _fold_loops(told)
    told.append(_outcome_sentence(trace, root, ended))

    if len(told) > MAX_SENTENCES:
        hidden = told[KEEP_HEAD:-KEEP_TAIL]
        gap = _Told(
            at=hidden[0].at,
            text=f"… {sum(t.repeat for t in hidden):,} more steps (see the tree and the waterfall)",
            kind="other",
        )
        told = [*told[:KEEP_HEAD], gap, *told[-KEEP_TAIL:]]

    return [
        Sentence(
            at=t.at,
            text=_with_tokens(t),
            kind=t.kind,
            span_id=t.span_id,
            detail=t.detail,
            repeat=t.repeat,
            tone=t.tone,
            offset=max(0.0, (t.at - started).total_seconds()),
            actor=t.actor,
        )
        for t in told
    ]


def _with_tokens(told: _Told) -> str:
    if told.kind != "llm" or not told.tokens:
        return told.text
    if told.repeat > 1:
        return f"{told.text} ({told.tokens:,} tokens in all)"
    return f"{told.text} ({told.tokens:,} tokens)"
