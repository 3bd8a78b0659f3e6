"""The demo fleet: four agents doing work that looks like real work, and the tools they use.

Tools act on the demo systems in ``fleet.sandbox``; side-effecting ones record their effect
under the step's idempotency key (a unique column), so a retried step cannot refund twice.
LLM steps say how the simulated provider should answer (``simulate=``); with a real provider
the same prompts go to the model and its JSON answer is parsed the same way.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Model
from django.utils import timezone

from fleet.runtime import ToolInvocation, agent, tool
from fleet.runtime.context import LlmCall, RunContext
from fleet.sandbox.models import EmailMessage, Invoice, LedgerPosting, Refund, ReviewComment, Ticket

# --- Tools ------------------------------------------------------------------------------------


def _once(model: type[Model], invocation: ToolInvocation, **fields: Any) -> Any:
    """Create the effect unless this step already made it (same idempotency key)."""
    try:
        with transaction.atomic():
            return model._default_manager.create(idempotency_key=invocation.idempotency_key, **fields)
    except IntegrityError:
        return model._default_manager.get(idempotency_key=invocation.idempotency_key)


@tool(
    "crm.get_ticket",
    description="Read a support ticket from the CRM.",
    risk="low",
    schema={
        "type": "object",
        "required": ["ticket_id"],
        "properties": {"ticket_id": {"type": "string"}},
    },
)
def crm_get_ticket(invocation: ToolInvocation, *, ticket_id: str) -> dict[str, Any]:
    ticket = Ticket.objects.get(ref=ticket_id)
    return {
        "ticket_id": ticket.ref,
        "customer": ticket.customer,
        "email": ticket.email,
        "subject": ticket.subject,
        "body": ticket.body,
        "order_total": str(ticket.order_total),
        "currency": ticket.currency,
    }


@tool(
    "payments.refund",
    description="Refund money to a customer's card.",
    side_effect=True,
    risk="high",
    idempotent=True,
    compensation="payments.refund_reverse",
    schema={
        "type": "object",
        "required": ["ticket_id", "amount", "currency"],
        "properties": {
            "ticket_id": {"type": "string"},
            "amount": {"type": "string", "pattern": r"^\d+(\.\d{1,2})?$"},
            "currency": {"type": "string", "minLength": 3, "maxLength": 3},
            "reason": {"type": "string"},
        },
    },
)
def payments_refund(
    invocation: ToolInvocation, *, ticket_id: str, amount: str, currency: str, reason: str = ""
) -> dict[str, Any]:
    refund = _once(
        Refund,
        invocation,
        ticket_ref=ticket_id,
        amount=Decimal(amount),
        currency=currency,
        reason=reason,
    )
    return {"refund_id": refund.pk, "amount": str(refund.amount), "currency": refund.currency}


@tool(
    "payments.refund_reverse",
    description="Reverse a refund (compensation of payments.refund).",
    side_effect=True,
    risk="high",
)
def payments_refund_reverse(
    invocation: ToolInvocation, *, args: dict[str, Any], result: dict[str, Any] | None
) -> dict[str, Any]:
    if not result:
        return {"reversed": False, "note": "the refund left no record"}
    updated = Refund.objects.filter(pk=result["refund_id"], reversed_at__isnull=True).update(
        reversed_at=timezone.now(), reversal_key=invocation.idempotency_key
    )
    return {"reversed": True, "refund_id": result["refund_id"], "already": updated == 0}


@tool(
    "email.send",
    description="Send an email to a customer.",
    side_effect=True,
    risk="medium",
    schema={
        "type": "object",
        "required": ["to", "subject", "body"],
        "properties": {
            "to": {"type": "string", "format": "email"},
            "subject": {"type": "string", "maxLength": 200},
            "body": {"type": "string"},
        },
    },
)
def email_send(invocation: ToolInvocation, *, to: str, subject: str, body: str) -> dict[str, Any]:
    message = _once(EmailMessage, invocation, to=to, subject=subject, body=body)
    return {"message_id": message.pk}


@tool(
    "erp.get_invoice",
    description="Fetch an incoming invoice document.",
    risk="low",
    schema={
        "type": "object",
        "required": ["invoice_id"],
        "properties": {"invoice_id": {"type": "string"}},
    },
)
def erp_get_invoice(invocation: ToolInvocation, *, invoice_id: str) -> dict[str, Any]:
    invoice = Invoice.objects.get(ref=invoice_id)
    return {
        "invoice_id": invoice.ref,
        "vendor": invoice.vendor,
        "text": invoice.text,
        "currency": invoice.currency,
    }


@tool(
    "erp.validate_invoice",
    description="Check extracted invoice fields against the vendor master data.",
    risk="low",
)
def erp_validate_invoice(invocation: ToolInvocation, *, invoice_id: str, vendor: str, amount: str) -> dict[str, Any]:
    invoice = Invoice.objects.get(ref=invoice_id)
    problems = []
    if vendor.strip().lower() != invoice.vendor.lower():
        problems.append(f"vendor {vendor!r} does not match {invoice.vendor!r}")
    if Decimal(amount) != invoice.amount:
        problems.append(f"amount {amount} does not match the document total {invoice.amount}")
    return {"valid": not problems, "problems": problems}


@tool(
    "ledger.post",
    description="Post an invoice to the general ledger.",
    side_effect=True,
    risk="high",
    compensation="ledger.reverse",
    schema={
        "type": "object",
        "required": ["invoice_id", "account", "amount"],
        "properties": {
            "invoice_id": {"type": "string"},
            "account": {"type": "string"},
            "amount": {"type": "string"},
        },
    },
)
def ledger_post(invocation: ToolInvocation, *, invoice_id: str, account: str, amount: str) -> dict[str, Any]:
    posting = _once(LedgerPosting, invocation, invoice_ref=invoice_id, account=account, amount=Decimal(amount))
    return {"posting_id": posting.pk}


@tool(
    "ledger.reverse",
    description="Reverse a ledger posting (compensation of ledger.post).",
    side_effect=True,
    risk="high",
)
def ledger_reverse(
    invocation: ToolInvocation, *, args: dict[str, Any], result: dict[str, Any] | None
) -> dict[str, Any]:
    if not result:
        return {"reversed": False}
    LedgerPosting.objects.filter(pk=result["posting_id"], reversed_at__isnull=True).update(
        reversed_at=timezone.now(), reversal_key=invocation.idempotency_key
    )
    return {"reversed": True, "posting_id": result["posting_id"]}


@tool("git.get_diff", description="Fetch the diff of a pull request.", risk="low")
def git_get_diff(invocation: ToolInvocation, *, repository: str, pull_request: int) -> dict[str, Any]:
    rng = random.Random(f"{repository}#{pull_request}")
    files = rng.sample(
        [
            "api/views.py",
            "auth/tokens.py",
            "billing/export.py",
            "requirements.txt",
            "web/forms.py",
            "infra/iam.tf",
            "worker/jobs.py",
        ],
        k=3,
    )
    return {
        "repository": repository,
        "pull_request": pull_request,
        "files": files,
        "additions": rng.randint(20, 400),
        "deletions": rng.randint(0, 120),
    }


@tool(
    "git.post_review",
    description="Post a review on the pull request.",
    side_effect=True,
    risk="low",
)
def git_post_review(
    invocation: ToolInvocation, *, repository: str, pull_request: int, verdict: str, body: str
) -> dict[str, Any]:
    comment = _once(
        ReviewComment,
        invocation,
        repository=repository,
        pull_request=pull_request,
        verdict=verdict,
        body=body,
    )
    return {"comment_id": comment.pk}


# --- How the simulated model answers -----------------------------------------------------------


def _refund_plan(ticket: dict[str, Any]) -> Any:
    def answer(rng: random.Random, messages: list[dict[str, Any]]) -> str:
        total = Decimal(ticket["order_total"])
        share = rng.choice([Decimal("1"), Decimal("0.5"), Decimal("0.25"), Decimal("0")])
        amount = (total * share).quantize(Decimal("0.01"))
        confidence = round(rng.uniform(0.55, 0.97), 2)
        if amount == 0:
            return json.dumps(
                {
                    "action": "reply",
                    "amount": "0",
                    "confidence": confidence,
                    "reasoning": "The order arrived and the complaint is about delivery time, which "
                    "the policy does not refund; explain and offer a voucher.",
                }
            )
        return json.dumps(
            {
                "action": "refund",
                "amount": str(amount),
                "confidence": confidence,
                "reasoning": f"The customer reports '{ticket['subject'].lower()}'. Order total "
                f"{ticket['order_total']} {ticket['currency']}; policy allows a "
                f"{int(share * 100)}% refund for this case.",
            }
        )

    return answer


def _email_text(kind: str) -> Any:
    def answer(rng: random.Random, messages: list[dict[str, Any]]) -> str:
        openings = [
            "Thank you for getting in touch.",
            "Thanks for your patience.",
            "Sorry about the trouble.",
        ]
        bodies = {
            "refund": "We have refunded your order to your card; it shows within 3–5 working days.",
            "reply": "Your parcel left our warehouse later than promised; here is a 10% voucher for next time.",
            "draft": "We have looked into your request and a colleague will follow up within one working day.",
        }
        return f"{rng.choice(openings)} {bodies[kind]}\n\nKind regards,\nCustomer Care"

    return answer


def _invoice_fields(invoice: dict[str, Any]) -> Any:
    def answer(rng: random.Random, messages: list[dict[str, Any]]) -> str:
        amount = invoice["text"].split("Total due:")[-1].split()[0]
        return json.dumps(
            {
                "vendor": invoice["vendor"],
                "amount": amount,
                "account": rng.choice(["6100", "6200", "6400"]),
            }
        )

    return answer


def _finding(area: str) -> Any:
    def answer(rng: random.Random, messages: list[dict[str, Any]]) -> str:
        severity = rng.choices(["none", "low", "medium", "high"], weights=[5, 3, 2, 1])[0]
        return json.dumps(
            {
                "area": area,
                "severity": severity,
                "finding": "nothing notable" if severity == "none" else f"possible {area} issue in the change",
            }
        )

    return answer


def _synthesis(rng: random.Random, messages: list[dict[str, Any]]) -> str:
    text = messages[-1]["content"]
    verdict = "request_changes" if '"high"' in text else "approve"
    return json.dumps(
        {
            "verdict": verdict,
            "summary": "Reviewed dependencies, secrets, authorization and injection.",
        }
    )


# --- Agents -----------------------------------------------------------------------------------


@agent("refund-desk", title="Refund desk")
def refund_desk(run: RunContext, *, ticket_id: str) -> dict[str, Any]:
    """Reads a ticket, decides whether to refund and how much, refunds, and tells the customer."""
    ticket = run.tool("crm.get_ticket", ticket_id=ticket_id)
    plan = run.llm(
        "decide",
        messages=[
            {"role": "system", "content": run.prompts.get("system", "You handle refund requests.")},
            {
                "role": "user",
                "content": f"Ticket {ticket['ticket_id']} from {ticket['customer']}: {ticket['subject']}\n"
                f"{ticket['body']}\nOrder total: {ticket['order_total']} {ticket['currency']}\n"
                'Answer in JSON: {"action": "refund"|"reply", "amount", "confidence", "reasoning"}.',
            },
        ],
        json=True,
        simulate=_refund_plan(ticket),
    ).json()
    run.decision(
        "refund or reply",
        choice=plan["action"],
        reasoning=plan["reasoning"],
        confidence=plan["confidence"],
        data={"amount": plan["amount"], "currency": ticket["currency"]},
    )
    outcome: dict[str, Any] = {"action": plan["action"]}
    if plan["action"] == "refund":
        refund = run.tool(
            "payments.refund",
            ticket_id=ticket_id,
            amount=plan["amount"],
            currency=ticket["currency"],
            reason=plan["reasoning"][:200],
        )
        outcome["refund"] = refund
    body = run.llm(
        "write reply",
        messages=[
            {"role": "system", "content": "Write a short, warm reply to the customer."},
            {
                "role": "user",
                "content": f"Action taken: {plan['action']} {plan['amount']} {ticket['currency']}.",
            },
        ],
        simulate=_email_text(plan["action"]),
    ).content
    outcome["email"] = run.tool("email.send", to=ticket["email"], subject=f"Re: {ticket['subject']}", body=body)
    return outcome


@agent("invoice-pipeline", title="Invoice pipeline")
def invoice_pipeline(run: RunContext, *, invoice_id: str) -> dict[str, Any]:
    """Extracts an invoice's fields, validates them against master data, posts to the ledger."""
    document = run.tool("erp.get_invoice", invoice_id=invoice_id)
    fields = run.llm(
        "extract fields",
        messages=[
            {
                "role": "system",
                "content": "Extract vendor, total amount and expense account as JSON.",
            },
            {"role": "user", "content": document["text"]},
        ],
        json=True,
        simulate=_invoice_fields(document),
    ).json()
    run.checkpoint("extracted", {"vendor": fields["vendor"], "amount": fields["amount"]})
    check = run.tool(
        "erp.validate_invoice",
        invoice_id=invoice_id,
        vendor=fields["vendor"],
        amount=fields["amount"],
    )
    if not check["valid"]:
        run.decision("hold invoice", choice="hold", reasoning="; ".join(check["problems"]), confidence=0.9)
        return {"posted": False, "problems": check["problems"]}
    run.checkpoint("validated")
    run.decision(
        "post invoice",
        choice="post",
        reasoning=f"{fields['vendor']} invoice of {fields['amount']} matches the vendor's master data",
        confidence=0.95,
    )
    posting = run.tool("ledger.post", invoice_id=invoice_id, account=fields["account"], amount=fields["amount"])
    run.checkpoint("posted", posting)
    return {"posted": True, "posting": posting}


@agent("security-review", title="Security review")
def security_review(run: RunContext, *, repository: str, pull_request: int) -> dict[str, Any]:
    """Reviews a pull request: four analyses in parallel, one synthesis, one review comment."""
    diff = run.tool("git.get_diff", repository=repository, pull_request=pull_request)
    areas = ["dependencies", "secrets", "authorization", "injection"]
    findings = run.parallel(
        [
            LlmCall(
                f"analyse {area}",
                messages=[
                    {
                        "role": "system",
                        "content": f"You are a security reviewer focused on {area}. Answer in JSON.",
                    },
                    {"role": "user", "content": json.dumps(diff)},
                ],
                json=True,
                simulate=_finding(area),
            )
            for area in areas
        ]
    )
    parsed = [finding.json() for finding in findings]
    summary = run.llm(
        "synthesise",
        messages=[
            {
                "role": "system",
                "content": "Combine the findings into a verdict: approve or request_changes. JSON.",
            },
            {"role": "user", "content": json.dumps(parsed)},
        ],
        json=True,
        simulate=_synthesis,
        model=None,
    ).json()
    run.tool(
        "git.post_review",
        repository=repository,
        pull_request=pull_request,
        verdict=summary["verdict"],
        body=summary["summary"] + "\n" + "\n".join(f"- {f['area']}: {f['severity']}" for f in parsed),
    )
    return {"verdict": summary["verdict"], "findings": parsed}


@agent("email-drafter", title="Customer email drafter")
def email_drafter(run: RunContext, *, ticket_id: str) -> dict[str, Any]:
    """Drafts and sends a holding reply to a new ticket."""
    ticket = run.tool("crm.get_ticket", ticket_id=ticket_id)
    draft = run.llm(
        "draft",
        messages=[
            {
                "role": "system",
                "content": run.prompts.get("system", "Draft a short holding reply."),
            },
            {"role": "user", "content": f"{ticket['subject']}\n{ticket['body']}"},
        ],
        simulate=_email_text("draft"),
    ).content
    sent = run.tool("email.send", to=ticket["email"], subject=f"Re: {ticket['subject']}", body=draft)
    return {"sent": sent}
