"""An operator takes a running run in hand: pauses it, changes its model, resumes it — and sees
every change as it happens, with a real worker executing the run."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from cockpit.audit import Actor
from cockpit.roles import Role
from fleet.models import ModelProvider, ProviderKind, Run, Step, StepKind
from fleet.services import agent_create, agent_version_create, run_create
from tests.browser.conftest import sign_in
from tests.support import processes

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.processes]


@pytest.fixture
def runs_worker(django_db_blocker):  # noqa: ANN001, ANN201
    worker = processes.start_worker(name="browser-runs", queues="runs", extra=["--pool", "threads"], concurrency=4)
    yield worker
    worker.stop()


def test_operator_pauses_overrides_and_resumes_a_running_run(
    page, runs_worker, eager_off, make_user, team, password
) -> None:
    import tests.fleet.agents  # noqa: F401  (the test agents)

    make_user(Role.OPERATOR, team, username="oscar")
    ModelProvider.objects.create(name="slow", kind=ProviderKind.SIMULATED, options={"latency_ms": 700})
    system = Actor.system("tests")
    agent = agent_create(actor=system, team=team, slug="analyst", name="Analyst", entrypoint="test-bench", tier=1)
    agent_version_create(actor=system, agent=agent, version="1.0.0", primary_model="slow/sim-small", max_steps=100)
    run, _ = run_create(actor=system, agent=agent, input={"steps": 12})

    sign_in(page, "oscar", password)
    page.goto(f"/fleet/runs/{run.pk}/")
    header = page.locator("#run-header")
    expect(header.get_by_text("Running", exact=True)).to_be_visible(timeout=20_000)
    expect(page.locator("#run-timeline").get_by_text("step 0", exact=True)).to_be_visible()

    controls = page.locator("#run-controls")
    controls.get_by_role("button", name="Pause").click()
    # The pause lands at the next step boundary; the page shows it without a reload.
    expect(header.get_by_text("Paused", exact=True)).to_be_visible(timeout=15_000)
    paused_steps = Step.objects.filter(run=run).count()
    assert 0 < paused_steps < 12

    controls.get_by_text("Override settings from the next step").click()
    page.fill("#override-model", "slow/sim-large")
    page.fill("#override-reason", "try the larger model")
    controls.get_by_role("button", name="Apply override").click()
    expect(page.locator("#run-timeline").get_by_text("slow/sim-large").first).to_be_visible()

    controls.get_by_role("button", name="Resume").click()
    expect(header.get_by_text("Running", exact=True)).to_be_visible(timeout=15_000)
    # New steps appear, made with the new model.
    expect(page.locator("#run-timeline").get_by_text(f"step {paused_steps}", exact=True)).to_be_visible(timeout=15_000)
    expect(header.get_by_text("Succeeded", exact=True)).to_be_visible(timeout=30_000)
    models = list(Step.objects.filter(run=run, kind=StepKind.LLM).order_by("seq").values_list("model", flat=True))
    assert models[:paused_steps] == ["slow/sim-small"] * paused_steps
    assert set(models[paused_steps:]) == {"slow/sim-large"}
    assert Run.objects.get(pk=run.pk).overrides == {"model": "slow/sim-large"}
