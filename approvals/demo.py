"""Demo data of approvals: approver groups and escalation policies for the demo teams, a team
policy for support, and a history of past decisions so the calibration pages have data."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import IO

from django.contrib.auth.models import Group, User
from django.db import transaction
from django.utils import timezone

from approvals.models import ApprovalRequest, ApprovalStatus, EscalationPolicy, Policy, team_scope
from approvals.services import approval_decide, approval_request_create, escalation_policy_save, policy_save
from cockpit.audit import Actor
from cockpit.models import Team
from cockpit.services import group_members_set
from fleet.models import Agent

ACTOR = Actor.system("seed_demo")
HISTORY = Actor.system("demo history")

SUPPORT_POLICY = """// Customer Support's own rules, on top of the global policy.

@id("support-refunds-up-to-500")
@description("No refund above 500 (in any currency) by an agent: finance handles those by hand.")
forbid (principal, action == Cockpit::Action::"execute", resource == Cockpit::Tool::"payments.refund")
when { context has amount_cents && context.amount_cents > 50000 };

@id("support-vip-customers-need-a-human")
@description("Anything that changes something for a VIP customer is checked by a person.")
forbid (principal, action == Cockpit::Action::"execute_unattended", resource)
when { resource.side_effect && context has customer_segment && context.customer_segment == "vip" };
"""

# team: [(group name, members, SLA seconds, channels)]
LEVELS = {
    "support": [
        ("Support approvers (L1)", ["andre", "dana"], 120, ["email"]),
        ("Support shift lead (L2)", ["dana"], 180, ["email"]),
        ("Support head (L3)", ["admin"], 300, ["email"]),
    ],
    "finance-ops": [
        ("Finance approvers (L1)", ["dana"], 300, ["email"]),
        ("Finance controller (L2)", ["admin"], 600, ["email"]),
    ],
}


def seed(*, stdout: IO[str]) -> None:
    for slug, levels in LEVELS.items():
        team = Team.objects.get(slug=slug)
        if EscalationPolicy.objects.filter(team=team).exists():
            continue
        specs = []
        for name, members, sla, channels in levels:
            group, _ = Group.objects.get_or_create(name=name)
            group_members_set(actor=ACTOR, group=group, users=User.objects.filter(username__in=members))
            specs.append({"group": group, "sla_seconds": sla, "channels": channels})
        escalation_policy_save(actor=ACTOR, team=team, name=f"{team.name} approvals", levels=specs)
    support = Team.objects.get(slug="support")
    if not Policy.objects.filter(scope=team_scope(support)).exists():
        policy_save(actor=ACTOR, team=support, source=SUPPORT_POLICY, comment="Refund ceiling and VIP rule.")
    _history()
    stdout.write("Approvals: escalation L1–L3 for support (2 / 3 / 5 min), L1–L2 for finance-ops; support's policy.\n")


@transaction.atomic
def _history() -> None:
    """A month of past decisions for the refund desk and the invoice pipeline (calibration)."""
    if ApprovalRequest.objects.filter(external_ref__startswith="history-").exists():
        return
    rng = random.Random(11)
    now = timezone.now()
    for agent_slug, action, count in (
        ("refund-desk", "payments.refund", 160),
        ("invoice-pipeline", "ledger.post", 60),
    ):
        agent = Agent.objects.filter(slug=agent_slug).first()
        if agent is None:
            continue
        for n in range(count):
            confidence = round(rng.uniform(0.45, 0.99), 2)
            amount = f"{rng.choice([15, 29.9, 45, 59, 89.9, 120, 240]):.2f}"
            if action == "payments.refund":
                args = {
                    "ticket_id": f"T-{1001 + n % 24}",
                    "amount": amount,
                    "currency": "EUR",
                    "reason": "damaged on arrival",
                }
            else:
                args = {"invoice_id": f"INV-{5001 + n % 20}", "account": "6100", "amount": amount}
            request, _ = approval_request_create(
                actor=HISTORY,
                agent=agent,
                action=action,
                arguments=args,
                reasoning="(past decision)",
                confidence=confidence,
                risk="high",
                external_ref=f"history-{agent_slug}-{n}",
                notify=False,
            )
            roll = rng.random()
            # Confident proposals are approved unchanged more often: a plausible calibration curve.
            if roll < confidence - 0.08:
                approval_decide(actor=HISTORY, request=request, approve=True)
            elif roll < confidence + 0.02:
                approval_decide(
                    actor=HISTORY,
                    request=request,
                    approve=True,
                    edited_arguments={**args, "amount": f"{float(amount) / 2:.2f}"},
                )
            else:
                approval_decide(actor=HISTORY, request=request, approve=False, reason="not covered by the policy")
            # Spread over the past month (demo history only).
            created = now - timedelta(days=rng.uniform(1, 30))
            waited = timedelta(seconds=rng.lognormvariate(4.2, 0.8))
            ApprovalRequest.objects.filter(pk=request.pk).update(created_at=created, decided_at=created + waited)
    ApprovalRequest.objects.filter(external_ref__startswith="history-", status=ApprovalStatus.PENDING).update(
        status=ApprovalStatus.EXPIRED
    )
