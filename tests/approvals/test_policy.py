"""Policy decides outside the model: the autonomy tiers, risk and confidence, team rules."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from approvals import cedar
from approvals.models import ActivePolicy, Policy
from approvals.services import judge, policy_activate, policy_save
from cockpit.audit import Actor
from cockpit.models import AuditEvent
from fleet.models import Agent, AgentKind, Tier

pytestmark = pytest.mark.django_db
ADMIN = Actor.system("tests")


def agent(team, tier: int, threshold: float = 0.8) -> Agent:  # noqa: ANN001
    found, _ = Agent.objects.get_or_create(
        team=team,
        slug=f"a{tier}-{int(threshold * 100)}",
        defaults={"name": "A", "tier": tier, "kind": AgentKind.MANAGED, "confidence_threshold": threshold},
    )
    return found


def verdict(
    team,
    *,
    tier: int,
    risk: str = "low",
    side_effect: bool = True,
    confidence: float | None = 0.95,  # noqa: ANN001
    tool: str = "crm.update",
    **context: object,
) -> str:
    ctx = cedar.context_for(args=dict(context), confidence=confidence, extra={}, sample=50)
    result, _ = judge(team=team, agent=agent(team, tier), tool=tool, risk=risk, side_effect=side_effect, context=ctx)
    return "forbid" if not result.allowed else "allow" if result.unattended else "approve"


@pytest.mark.parametrize(
    ("tier", "risk", "side_effect", "confidence", "expected"),
    [
        # Reading never needs a human, whatever the tier (and low risk).
        (Tier.MANUAL, "low", False, 0.99, "allow"),
        (Tier.ASSISTED, "low", False, None, "allow"),
        # Tiers 1 and 2 act on their own when the risk is low or medium and they are confident.
        (Tier.FULL_AUTO, "low", True, 0.95, "allow"),
        (Tier.FULL_AUTO, "medium", True, 0.95, "allow"),
        (Tier.SUPERVISED, "medium", True, 0.95, "allow"),
        (Tier.SUPERVISED, "low", True, None, "allow"),
        # Tiers 3 and 4 never change anything unattended.
        (Tier.ASSISTED, "low", True, 0.99, "approve"),
        (Tier.MANUAL, "low", True, 0.99, "approve"),
        # High and critical risk always need a human, whatever the tier or confidence.
        (Tier.FULL_AUTO, "high", True, 0.99, "approve"),
        (Tier.FULL_AUTO, "critical", True, 0.99, "approve"),
        (Tier.SUPERVISED, "high", True, 0.99, "approve"),
        # Below the agent's calibrated threshold (0.8 here), a human decides.
        (Tier.FULL_AUTO, "low", True, 0.79, "approve"),
        (Tier.SUPERVISED, "medium", True, 0.5, "approve"),
        (Tier.FULL_AUTO, "low", True, 0.80, "allow"),
    ],
)
def test_default_policy_table(team, tier, risk, side_effect, confidence, expected) -> None:
    assert verdict(team, tier=tier, risk=risk, side_effect=side_effect, confidence=confidence) == expected


def test_the_verdict_names_the_rules(team) -> None:
    ctx = cedar.context_for(args={}, confidence=0.4, extra={}, sample=1)
    result, policies = judge(
        team=team,
        agent=agent(team, Tier.FULL_AUTO),
        tool="payments.refund",
        risk="critical",
        side_effect=True,
        context=ctx,
    )
    assert result.allowed and not result.unattended
    assert set(result.needs_human_by) == {"high-risk-needs-a-human", "low-confidence-needs-a-human"}
    assert [p.ref for p in policies] == ["global v1"]
    assert "a human must decide" in result.explain()


def test_a_team_policy_adds_its_rules_to_the_global_ones(team, other_team) -> None:
    policy_save(
        actor=ADMIN,
        team=team,
        comment="refund ceiling",
        source="""
@id("refunds-up-to-500")
forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"payments.refund")
when { context has amount_cents && context.amount_cents > 50000 };
""",
    )
    assert verdict(team, tier=Tier.ASSISTED, tool="payments.refund", risk="high", amount="499.99") == "approve"
    assert verdict(team, tier=Tier.ASSISTED, tool="payments.refund", risk="high", amount="500.01") == "forbid"
    assert verdict(other_team, tier=Tier.ASSISTED, tool="payments.refund", risk="high", amount="900") == "approve"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("permit (principal, action, resource) when { ", "Cedar syntax"),
        (
            '@id("typo")\nforbid (principal, action == Cockpit::Action::"execute", resource) '
            "when { resource.riskiness > 1 };",
            "typo: ",
        ),
        (
            '@id("wrong-type")\npermit (principal, action == Cockpit::Action::"execute", resource) '
            'when { principal.tier == "3" };',
            "wrong-type: ",
        ),
    ],
)
def test_an_invalid_policy_is_refused_with_its_errors_and_saves_nothing(team, source, message) -> None:
    with pytest.raises(ValidationError) as error:
        policy_save(actor=ADMIN, team=team, source=source)
    assert any(message in m for m in error.value.message_dict["source"])
    assert not Policy.objects.filter(team=team).exists()


def test_versions_are_immutable_numbered_audited_and_can_be_rolled_back(team) -> None:
    first = policy_save(actor=ADMIN, team=team, source='@id("a")\npermit (principal, action, resource);', comment="v1")
    second = policy_save(
        actor=ADMIN, team=team, source='@id("b")\npermit (principal, action, resource);', comment="v2"
    )
    assert (first.version, second.version) == (1, 2)
    assert ActivePolicy.objects.get(scope=f"team:{team.pk}").policy == second
    policy_activate(actor=ADMIN, policy=first)
    assert ActivePolicy.objects.get(scope=f"team:{team.pk}").policy == first
    assert list(
        AuditEvent.objects.filter(action__startswith="policy.").values_list("action", flat=True).order_by("id")
    ) == ["policy.save", "policy.save", "policy.activate"]


def test_without_any_policy_nothing_is_allowed(team) -> None:
    ActivePolicy.objects.all().delete()
    assert verdict(team, tier=Tier.FULL_AUTO, side_effect=False) == "forbid"


def test_decisions_are_cheap_enough_to_run_before_every_step(team) -> None:
    """Parsing happens once per policy version; evaluating reuses it."""
    cedar._cache.clear()
    verdict(team, tier=Tier.FULL_AUTO)
    verdict(team, tier=Tier.ASSISTED)
    assert len(cedar._cache) == 1
