"""Delivering notifications: email to the level's approvers, a Slack-compatible webhook signed
with HMAC-SHA256, and the callback to an external agent that asked for the decision.

Webhook and callback requests are signed by ``cockpit.webhooks`` (``X-Cockpit-Timestamp`` and
``X-Cockpit-Signature: sha256=<hex HMAC of "<timestamp>.<body>">``); a receiver recomputes the
HMAC with the shared secret and rejects stale timestamps.
"""

from __future__ import annotations

import json
import time
from typing import Any

from django.conf import settings
from django.core.mail import send_mail
from django.urls import reverse

from approvals.models import ApprovalRequest, Channel, Notification
from cockpit.webhooks import DeliveryError, sign
from cockpit.webhooks import post as _post

__all__ = ["DeliveryError", "deliver", "describe", "sign"]


def _url(path: str) -> str:
    return settings.COCKPIT_BASE_URL.rstrip("/") + path


def describe(request: ApprovalRequest) -> dict[str, Any]:
    return {
        "id": request.pk,
        "kind": request.kind,
        "status": request.status,
        "team": request.team.slug,
        "agent": request.agent.slug,
        "action": request.action,
        "arguments": request.arguments,
        "edited_arguments": request.edited_arguments,
        "risk": request.risk,
        "confidence": request.confidence,
        "level": request.level,
        "deadline": request.deadline.isoformat(),
        "decided_by": request.decided_by_label or None,
        "decision_reason": request.decision_reason or None,
        "external_ref": request.external_ref or None,
        "run": request.run_id,
        "url": _url(reverse("approvals") + f"?selected={request.pk}"),
    }


def deliver(notification: Notification) -> None:
    request = notification.request
    if notification.channel == Channel.EMAIL:
        _email(request, notification.level)
    elif notification.channel == Channel.WEBHOOK:
        level = request.escalation_policy.levels.get(level=notification.level) if request.escalation_policy else None
        if level is None or not level.webhook_url:
            return
        _post(level.webhook_url, level.webhook_secret, _slack_message(request))
    elif notification.channel == Channel.CALLBACK:
        _post(request.callback_url, settings.COCKPIT_CALLBACK_SECRET, {"approval": describe(request)})


def _email(request: ApprovalRequest, level: int) -> None:
    from approvals.services import _recipients

    # The approvers of the level the notification is about: in a storm an email may go out
    # after the request has moved on, and must not reach the next level's group instead.
    policy = request.escalation_policy
    recipients = _recipients(request, policy.levels.filter(level=level).first() if policy else None)
    if not recipients:
        return
    minutes = max(1, round((request.deadline.timestamp() - time.time()) / 60))
    subject = f"[Cockpit] Approval needed (L{level}): {request.agent.name} → {request.action}"
    body = (
        f"{request.agent.name} ({request.team.name}) wants to run {request.action} and needs a decision "
        f"within about {minutes} min.\n\n"
        f"Arguments:\n{json.dumps(request.arguments, indent=2, ensure_ascii=False)}\n\n"
        f"Why: {request.reasoning or '(no reasoning given)'}\n"
        f"Confidence: {'' if request.confidence is None else f'{request.confidence:.0%}'}   Risk: {request.risk}\n\n"
        f"Decide: {describe(request)['url']}\n"
    )
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, recipients)


def _slack_message(request: ApprovalRequest) -> dict[str, Any]:
    data = describe(request)
    arguments = ", ".join(f"{k}={v}" for k, v in request.arguments.items())
    text = (
        f":hourglass: *Approval needed (L{request.level})* — {request.agent.name} wants to run "
        f"`{request.action}` ({arguments}). Risk {request.risk}. <{data['url']}|Decide in Cockpit>"
    )
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
        "cockpit": data,
    }
