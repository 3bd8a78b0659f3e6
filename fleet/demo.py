"""Demo data of the fleet: the simulated model provider, four agents with versions, the demo
systems' tickets and invoices; and ``start_random_run`` which keeps the demo busy. Idempotent."""

from __future__ import annotations

import random
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

from django.conf import settings
from django.utils import timezone

from cockpit.audit import Actor
from cockpit.models import Scope, Team
from cockpit.services import api_key_authenticate, api_key_create
from fleet.models import Agent, AgentKind, ModelProvider, ProviderKind, Run, Tier
from fleet.sandbox.models import Invoice, Ticket
from fleet.services import agent_create, agent_version_create, run_create, tools_sync

ACTOR = Actor.system("seed_demo")
SPAWNER = Actor.system("demo traffic")

# (version, primary model, fallback models, run budget, tools, notes)
VersionSpec = tuple[str, str, list[str], str, list[str], str]

AGENTS: list[tuple[str, str, str, int, str, list[VersionSpec]]] = [
    # team, slug, name, tier, description, versions
    (
        "support",
        "refund-desk",
        "Refund desk",
        Tier.ASSISTED,
        "Decides refund requests and refunds the customer's card; refunds need a human's approval.",
        [
            (
                "1.0.0",
                "sim/sim-large",
                ["sim/sim-small"],
                "0.05",
                ["crm.get_ticket", "payments.refund", "email.send"],
                "First release.",
            ),
            (
                "1.1.0",
                "sim/sim-large",
                ["sim/sim-small"],
                "0.08",
                ["crm.get_ticket", "payments.refund", "email.send"],
                "Larger budget; friendlier reply prompt.",
            ),
        ],
    ),
    (
        "finance-ops",
        "invoice-pipeline",
        "Invoice pipeline",
        Tier.SUPERVISED,
        "Extracts, validates and posts incoming invoices.",
        [
            (
                "2.3.0",
                "sim/sim-small",
                ["sim/sim-large"],
                "0.03",
                ["erp.get_invoice", "erp.validate_invoice", "ledger.post"],
                "Posts to the ledger after validation.",
            )
        ],
    ),
    (
        "security",
        "security-review",
        "Security review",
        Tier.FULL_AUTO,
        "Reviews pull requests: dependencies, secrets, authorization and injection, in parallel.",
        [
            (
                "0.9.0",
                "sim/sim-reasoner",
                ["sim/sim-large"],
                "0.30",
                ["git.get_diff", "git.post_review"],
                "Beta.",
            )
        ],
    ),
    (
        "support",
        "email-drafter",
        "Customer email drafter",
        Tier.SUPERVISED,
        "Sends a holding reply to every new ticket.",
        [
            (
                "1.0.0",
                "sim/sim-small",
                [],
                "0.02",
                ["crm.get_ticket", "email.send"],
                "First release.",
            )
        ],
    ),
]

PROMPTS = {
    "refund-desk": {
        "system": "You handle refund requests for an online shop. Follow the refund policy: full refund "
        "for damaged or missing goods, half for late delivery over 10 days, none otherwise."
    },
    "email-drafter": {"system": "Draft a short, warm holding reply; promise a follow-up within one working day."},
}

TICKETS = [
    ("Parcel arrived damaged", "The box was crushed and the lamp inside is broken.", "89.90"),
    ("Order never arrived", "Tracking says delivered but nothing came.", "142.50"),
    ("Late delivery", "My order took three weeks to arrive.", "59.00"),
    ("Wrong size", "I ordered a medium and got a small; can I exchange it?", "35.00"),
    ("Charged twice", "My card shows two charges for the same order.", "212.00"),
    ("Missing part", "The shelf came without its screws.", "74.99"),
]
CUSTOMERS = [
    "Ana Lima",
    "Ben Okoro",
    "Chloé Martin",
    "Deniz Yıldız",
    "Erik Sørensen",
    "Fatima Zahra",
    "Gus Meyer",
]
VENDORS = [
    ("Northwind Supplies", "1240.00"),
    ("Acme Cloud", "899.00"),
    ("Blue Freight", "455.20"),
    ("Paper & Co", "96.40"),
    ("Kite Legal", "2100.00"),
]


def seed(*, stdout: IO[str]) -> None:
    ModelProvider.objects.get_or_create(
        name="sim",
        defaults={
            "kind": ProviderKind.SIMULATED,
            "timeout_seconds": 30,
            "options": {"latency_ms": 600, "jitter_ms": 400, "failure_rate": 0.03},
        },
    )
    tools_sync()
    teams = {t.slug: t for t in Team.objects.filter(slug__in={a[0] for a in AGENTS})}
    for team_slug, slug, name, tier, description, versions in AGENTS:
        agent = Agent.objects.filter(team=teams[team_slug], slug=slug).first()
        if agent is None:
            agent = agent_create(
                actor=ACTOR,
                team=teams[team_slug],
                slug=slug,
                name=name,
                description=description,
                kind=AgentKind.MANAGED,
                entrypoint=slug,
                tier=tier,
            )
        for version, primary, fallbacks, budget, tools, notes in versions:
            if not agent.versions.filter(version=version).exists():
                agent_version_create(
                    actor=ACTOR,
                    agent=agent,
                    version=version,
                    primary_model=primary,
                    fallback_models=fallbacks,
                    max_steps=30,
                    run_budget=Decimal(budget),
                    prompts=PROMPTS.get(slug, {}),
                    tools=tools,
                    notes=notes,
                    temperature=0.2,
                )
    if not Agent.objects.filter(slug="crm-sync").exists():
        agent_create(
            actor=ACTOR,
            team=teams["support"],
            slug="crm-sync",
            name="CRM sync (LangGraph)",
            description="Runs in the CRM team's own infrastructure and reports here over the API.",
            kind=AgentKind.EXTERNAL,
            tier=Tier.SUPERVISED,
        )
    _external_agent_key(teams["support"])
    _sandbox()
    if not Run.objects.exists():
        for _ in range(6):
            start_random_run(force=True)
    stdout.write("Fleet: 5 agents, the simulated model provider, demo tickets and invoices.\n")


EXTERNAL_KEY_NAME = "demo external agents"


def external_key_file() -> Path:
    return Path(settings.VAR_DIR) / "demo-external.key"


def _external_agent_key(team: Team) -> None:
    """The API key the demo's external agents (fleet.demo_external) use, kept in var/."""
    path = external_key_file()
    if path.exists():
        found = api_key_authenticate(path.read_text().strip())
        if found is not None and found.is_active:
            return
    _, secret = api_key_create(
        actor=ACTOR, team=team, name=EXTERNAL_KEY_NAME, scopes=[Scope.RUNS, Scope.INGEST, Scope.APPROVALS]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(secret + "\n")


def _sandbox() -> None:
    rng = random.Random(7)
    for n, (subject, body, total) in enumerate(TICKETS * 4, start=1001):
        customer = rng.choice(CUSTOMERS)
        Ticket.objects.get_or_create(
            ref=f"T-{n}",
            defaults={
                "customer": customer,
                "email": f"{customer.split()[0].lower()}@example.com",
                "subject": subject,
                "body": body,
                "order_total": Decimal(total),
                "currency": "EUR",
            },
        )
    for n, (vendor, amount) in enumerate(VENDORS * 4, start=5001):
        Invoice.objects.get_or_create(
            ref=f"INV-{n}",
            defaults={
                "vendor": vendor,
                "amount": Decimal(amount),
                "currency": "EUR",
                "text": f"INVOICE {n}\n{vendor}\nServices rendered in {timezone.now():%B %Y}.\n"
                f"Total due: {amount} EUR",
            },
        )


def _input_for(slug: str, rng: random.Random) -> dict[str, Any]:
    if slug in ("refund-desk", "email-drafter"):
        return {"ticket_id": rng.choice(list(Ticket.objects.values_list("ref", flat=True)))}
    if slug == "invoice-pipeline":
        return {"invoice_id": rng.choice(list(Invoice.objects.values_list("ref", flat=True)))}
    return {
        "repository": rng.choice(["shop/api", "shop/web", "platform/infra"]),
        "pull_request": rng.randint(100, 999),
    }


def start_random_run(*, force: bool = False) -> Run | None:
    """Start a run of a random active demo agent, unless one started within the interval."""
    interval = settings.COCKPIT["DEMO_RUN_INTERVAL_SECONDS"]
    recent = Run.objects.filter(
        created_by_label=SPAWNER.label, created_at__gte=timezone.now() - timedelta(seconds=interval)
    ).exists()
    if recent and not force:
        return None
    agents = list(Agent.objects.filter(kind=AgentKind.MANAGED, status="active", current_version__isnull=False))
    if not agents:
        return None
    rng = random.Random()
    agent = rng.choices(agents, weights=[3 if a.slug in ("refund-desk", "invoice-pipeline") else 1 for a in agents])[0]
    run, _ = run_create(actor=SPAWNER, agent=agent, input=_input_for(agent.slug, rng))
    return run
