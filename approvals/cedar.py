"""Policy in Cedar, evaluated outside the model: may this action happen at all (``execute``),
and may it happen without a human (``execute_unattended``)?

Entities: the agent (``Cockpit::Agent``, member of its ``Cockpit::Team``; ``tier``,
``threshold_pct`` — its calibrated confidence threshold —, ``slug``, ``kind``) and the tool
(``Cockpit::Tool``; ``risk``, ``risk_level`` 1–4, ``side_effect``). Context, each optional:
``confidence_pct`` (0–100), ``amount_cents``, ``currency``, ``customer_segment``, and ``sample``
(0–99, the same for a given run step: policies may use it to sample).

A rule that makes a person decide (a ``forbid`` on ``execute_unattended``) may say from which
escalation level up they decide, with ``@level("2")``: the request starts at that level, and an
edit that such a rule catches cannot be approved at a lower one.

Parsed policy sets are cached per (global version, team version). cedarpy fails closed
silently on a bad policy, so every source is parsed with ``PolicySet.from_str`` (which raises)
and validated against the schema before it is saved, and every evaluation reads
``result.allowed`` and logs diagnostics errors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import cedarpy

logger = logging.getLogger(__name__)

SCHEMA = """
namespace Cockpit {
  entity Team;
  entity Agent in [Team] { tier: Long, threshold_pct: Long, slug: String, kind: String };
  entity Tool { risk: String, risk_level: Long, side_effect: Bool };
  action "execute", "execute_unattended" appliesTo {
    principal: [Agent],
    resource: [Tool],
    context: {
      confidence_pct?: Long,
      amount_cents?: Long,
      currency?: String,
      customer_segment?: String,
      sample?: Long
    }
  };
}
"""

DEFAULT_GLOBAL_POLICY = """// Cockpit's default policy: the autonomy tiers.
// "execute": may the action happen at all?  "execute_unattended": may it happen without a human?

@id("allow-by-default")
@description("Any action may happen unless a forbid rule says otherwise.")
permit (principal, action == Cockpit::Action::"execute", resource);

@id("read-only-unattended")
@description("Reading changes nothing: no human needed.")
permit (principal, action == Cockpit::Action::"execute_unattended", resource)
when { !resource.side_effect };

@id("tier-1-full-auto")
@description("Tier 1 agents act on their own.")
permit (principal, action == Cockpit::Action::"execute_unattended", resource)
when { principal.tier == 1 };

@id("tier-2-supervised")
@description("Tier 2 agents act on their own; a sample of their actions is reviewed afterwards.")
permit (principal, action == Cockpit::Action::"execute_unattended", resource)
when { principal.tier == 2 };

// Tiers 3 (Assisted) and 4 (Manual): no rule lets them change anything unattended, so every
// side-effecting action waits for a human.

@id("high-risk-needs-a-human")
@description("High and critical risk actions always need a human, whatever the tier or confidence.")
forbid (principal, action == Cockpit::Action::"execute_unattended", resource)
when { resource.risk_level >= 3 };

@id("low-confidence-needs-a-human")
@description("Below the agent's calibrated confidence threshold, a human decides.")
forbid (principal, action == Cockpit::Action::"execute_unattended", resource)
when { context has confidence_pct && context.confidence_pct < principal.threshold_pct };
"""

RISK_LEVEL = {"low": 1, "medium": 2, "high": 3, "critical": 4}
REVIEW_SAMPLE_PCT = 15  # tier 2: this share of unattended actions is reviewed afterwards


class PolicyError(ValueError):
    """A policy source that does not parse or does not fit the schema; ``errors`` say where."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Subject:
    """What the policy is asked about."""

    team: str
    agent: str  # slug
    agent_kind: str
    tier: int
    threshold: float  # 0..1
    tool: str
    risk: str
    side_effect: bool
    context: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    allowed: bool  # execute
    unattended: bool  # execute_unattended
    forbidden_by: list[str]  # @ids of forbid rules that stopped "execute"
    needs_human_by: list[str]  # @ids of forbid rules that stopped "execute_unattended" ([] = no permit)
    permitted_by: list[str]
    errors: list[str]
    # The lowest escalation level at which a person may decide (the highest ``@level`` among the
    # rules that made a person necessary; 1 when none says).
    level: int = 1
    # The ``@description`` of each forbid rule that stopped "execute", by its @id.
    forbidden_because: dict[str, str] = field(default_factory=dict)

    def refusal(self) -> str:
        """Why "execute" was denied, in the rules' own words: "<@id>: <@description>"."""
        if not self.forbidden_by:
            return "no policy allows this action"
        return "; ".join(
            f"{rule}: {self.forbidden_because[rule]}" if self.forbidden_because.get(rule) else rule
            for rule in self.forbidden_by
        )

    def explain(self) -> str:
        if not self.allowed:
            if self.forbidden_by:
                return f"forbidden by {', '.join(self.forbidden_by)}"
            return "no policy allows this action"
        if self.unattended:
            return f"allowed unattended by {', '.join(self.permitted_by) or 'policy'}"
        if self.needs_human_by:
            return f"a human must decide ({', '.join(self.needs_human_by)})"
        return "a human must decide (no policy lets this agent do it unattended)"


def validate(source: str) -> list[str]:
    """Problems with a policy source, each naming the rule (its @id) it is in; [] if none."""
    try:
        cedarpy.PolicySet.from_str(source)
    except ValueError as exc:
        return [f"Cedar syntax: {exc}"]
    result = cedarpy.validate_policies(source, SCHEMA)
    problems = []
    if not result.validation_passed:
        names = getattr(result, "id_annotations_by_policy_id", {}) or {}
        problems = [f"{names.get(e.policy_id, e.policy_id)}: {e.error}" for e in result.errors]
    for policy_id, notes in _annotations(source).items():
        level = notes.get("level")
        if level is not None and level not in {"1", "2", "3", "4"}:
            problems.append(f'{notes.get("id", policy_id)}: @level is "1" to "4", not "{level}".')
    return problems


def _annotations(source: str) -> dict[str, dict[str, str]]:
    """Each rule's annotations (``@id``, ``@description``, ``@level``…) by Cedar's policy id."""
    parsed = json.loads(cedarpy.policies_to_json_str(source))
    return {pid: rule.get("annotations") or {} for pid, rule in parsed.get("staticPolicies", {}).items()}


_lock = threading.Lock()


@dataclass(frozen=True)
class Parsed:
    """A parsed policy set and its rules' annotations (by Cedar's policy id)."""

    policies: cedarpy.PolicySet
    annotations: dict[str, dict[str, str]]


_cache: dict[tuple[tuple[int, str], ...], Parsed] = {}


def policy_set(sources: list[tuple[int, str]]) -> Parsed:
    """The parsed set of these (policy id, source) pairs, parsed once per process. Keyed by the
    sources too: an id alone can name another source where ids are reused (SQLite reuses the
    ids of rolled-back rows)."""
    key = tuple(sources)
    with _lock:
        found = _cache.get(key)
        if found is None:
            text = "\n".join(source for _, source in sources)
            found = Parsed(cedarpy.PolicySet.from_str(text), _annotations(text))
            if len(_cache) > 256:
                _cache.clear()
            _cache[key] = found
        return found


def entities(subject: Subject) -> list[dict[str, Any]]:
    team = {"type": "Cockpit::Team", "id": subject.team}
    return [
        {"uid": team, "attrs": {}, "parents": []},
        {
            "uid": {"type": "Cockpit::Agent", "id": f"{subject.team}/{subject.agent}"},
            "attrs": {
                "tier": subject.tier,
                "threshold_pct": round(subject.threshold * 100),
                "slug": subject.agent,
                "kind": subject.agent_kind,
            },
            "parents": [team],
        },
        {
            "uid": {"type": "Cockpit::Tool", "id": subject.tool},
            "attrs": {
                "risk": subject.risk,
                "risk_level": RISK_LEVEL.get(subject.risk, 2),
                "side_effect": subject.side_effect,
            },
            "parents": [],
        },
    ]


def evaluate(parsed: Parsed, subject: Subject) -> Verdict:
    ents = entities(subject)
    results = {}
    decisive: dict[str, list[str]] = {}
    errors: list[str] = []
    for action in ("execute", "execute_unattended"):
        request = {
            "principal": {"type": "Cockpit::Agent", "id": f"{subject.team}/{subject.agent}"},
            "action": {"type": "Cockpit::Action", "id": action},
            "resource": {"type": "Cockpit::Tool", "id": subject.tool},
            "context": subject.context,
        }
        result = cedarpy.is_authorized(request, parsed.policies, ents)
        if result.diagnostics.errors:
            errors += [str(e) for e in result.diagnostics.errors]
            logger.error(
                "policy evaluation errors for %s on %s: %s", subject.agent, subject.tool, result.diagnostics.errors
            )
        names = result.diagnostics.id_annotations_by_reason or {}
        results[action] = (result.allowed, [names.get(r, r) for r in result.diagnostics.reasons])
        decisive[action] = list(result.diagnostics.reasons)
    allowed, allow_reasons = results["execute"]
    unattended, unattended_reasons = results["execute_unattended"]
    notes = parsed.annotations
    level = 1
    if allowed and not unattended:
        for pid in decisive["execute_unattended"]:
            with contextlib.suppress(ValueError):
                level = max(level, min(4, int(notes.get(pid, {}).get("level", 1))))
    because = {}
    if not allowed:
        because = {
            notes.get(pid, {}).get("id", pid): notes.get(pid, {}).get("description", "") for pid in decisive["execute"]
        }
    return Verdict(
        allowed=allowed,
        unattended=allowed and unattended,
        forbidden_by=[] if allowed else allow_reasons,
        needs_human_by=[] if unattended else unattended_reasons,
        permitted_by=unattended_reasons if unattended else allow_reasons,
        errors=errors,
        level=level,
        forbidden_because=because,
    )


def context_for(
    *, args: dict[str, Any], confidence: float | None, extra: dict[str, Any], sample: int
) -> dict[str, Any]:
    """The Cedar context of an action: confidence, the amount and currency found among its
    arguments (or in the decision's data), the customer segment, the sample number."""
    context: dict[str, Any] = {"sample": sample}
    if confidence is not None:
        context["confidence_pct"] = max(0, min(100, round(confidence * 100)))
    merged = {**extra, **args}
    amount = merged.get("amount")
    if amount is not None:
        try:
            from decimal import Decimal

            context["amount_cents"] = int(Decimal(str(amount)) * 100)
        except (ArithmeticError, ValueError):
            pass
    if isinstance(merged.get("currency"), str):
        context["currency"] = merged["currency"]
    segment = merged.get("customer_segment") or merged.get("segment")
    if isinstance(segment, str):
        context["customer_segment"] = segment
    return context
