"""URLs of the whole site; the one place (with the fleet overview) that composes every app."""

from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from cockpit import views
from cockpit.api import api
from traces.receiver import otlp_traces

# Each app mounts its REST router here; apps never import one another's APIs.
api.add_router("/", "fleet.api.router")
api.add_router("/", "fleet.api.agents_router")
api.add_router("/", "approvals.api.router")
api.add_router("/", "traces.api.router")

urlpatterns = [
    path("", views.fleet_overview, name="fleet-overview"),
    path("team/switch/", views.team_switch, name="team-switch"),
    path("audit/", views.audit_log, name="audit"),
    path("settings/api-keys/", views.api_keys, name="api-keys"),
    path("settings/api-keys/<int:pk>/revoke/", views.api_key_revoke, name="api-key-revoke"),
    path("settings/teams/", views.teams, name="teams"),
    path("settings/teams/<slug:slug>/grant/", views.membership_grant, name="membership-grant"),
    path("settings/memberships/<int:pk>/revoke/", views.membership_revoke, name="membership-revoke"),
    path("system/", views.system, name="system"),
    path("healthz", views.healthz, name="healthz"),
    path(
        "account/login/",
        auth_views.LoginView.as_view(redirect_authenticated_user=True),
        name="login",
    ),
    path("account/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("account/password/", views.password_change, name="password-change"),
    path("fleet/", include("fleet.urls")),
    path("approvals/", include("approvals.urls")),
    path("traces/", include("traces.urls")),
    path("finops/", include("finops.urls")),
    path("api/v1/", api.urls),
    path("v1/traces", otlp_traces, name="otlp-traces"),
    path("admin/", admin.site.urls),
]
