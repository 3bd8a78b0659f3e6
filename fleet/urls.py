"""Fleet pages, mounted at /fleet/ (see cockpit/urls.py). Names are global: the main nav links
to "runs"."""

from __future__ import annotations

from django.urls import path

from fleet import views

urlpatterns = [
    path("agents/", views.agents, name="agents"),
    path("agents/<int:pk>/", views.agent_detail, name="agent-detail"),
    path("agents/<int:pk>/status/", views.agent_status, name="agent-status"),
    path("agents/<int:pk>/tier/", views.agent_tier, name="agent-tier"),
    path("agents/<int:pk>/slo/", views.agent_slo, name="agent-slo"),
    path("agents/<int:pk>/versions/diff/", views.agent_version_diff, name="agent-version-diff"),
    path("runs/", views.runs, name="runs"),
    path("runs/<int:pk>/", views.run_detail, name="run-detail"),
    path("runs/<int:pk>/pause/", views.run_pause, name="run-pause"),
    path("runs/<int:pk>/resume/", views.run_resume, name="run-resume"),
    path("runs/<int:pk>/cancel/", views.run_cancel, name="run-cancel"),
    path("runs/<int:pk>/override/", views.run_override, name="run-override"),
]
