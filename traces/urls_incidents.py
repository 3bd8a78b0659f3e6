"""Incidents, the OTLP JSON export of a trace, and discovered agents (mounted at /traces/)."""

from __future__ import annotations

from django.urls import path

from traces import incident_views as views

urlpatterns = [
    path("incidents/", views.incident_list, name="incidents"),
    path("incidents/<int:pk>/", views.incident_detail, name="incident-detail"),
    path("incidents/<int:pk>/notes/", views.incident_note, name="incident-note"),
    path("incidents/<int:pk>/edit/", views.incident_edit, name="incident-edit"),
    path("incidents/<int:pk>/status/", views.incident_status, name="incident-status"),
    path("incidents/<int:pk>/related/", views.incident_link, name="incident-link"),
    path("incidents/<int:pk>/related/<int:trace_pk>/remove/", views.incident_unlink, name="incident-unlink"),
    path("<int:pk>/incident/", views.incident_open, name="incident-open"),
    path("<int:pk>/export.json", views.trace_export, name="trace-export"),
    path("discovered/", views.discovered_list, name="discovered"),
    path("discovered/<int:pk>/adopt/", views.discovered_adopt, name="discovered-adopt"),
]
