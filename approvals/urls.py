"""Approvals pages, mounted at /approvals/ (see cockpit/urls.py). Names are global: the main nav
links to "approvals"."""

from __future__ import annotations

from django.urls import path

from approvals import views

urlpatterns = [
    path("", views.queue, name="approvals"),
    path("<int:pk>/", views.detail, name="approval-detail"),
    path("<int:pk>/approve/", views.approve, name="approval-approve"),
    path("<int:pk>/approve-with-edits/", views.approve_with_edits, name="approval-approve-with-edits"),
    path("<int:pk>/reject/", views.reject, name="approval-reject"),
    path("<int:pk>/execute/", views.execute, name="approval-execute"),
    path("policies/", views.policies, name="approval-policies"),
    path("policies/save/", views.policy_save, name="approval-policy-save"),
    path("policies/<int:pk>/activate/", views.policy_activate, name="approval-policy-activate"),
    path("escalation/", views.escalation, name="approval-escalation"),
    path("escalation/new/", views.escalation_new, name="approval-escalation-new"),
    path("escalation/<int:pk>/", views.escalation_edit, name="approval-escalation-edit"),
    path("agents/<int:pk>/calibration/", views.calibration, name="approval-calibration"),
    path("agents/<int:pk>/decisions.jsonl", views.decisions_export, name="approval-decisions-export"),
    path("agents/<int:pk>/promote/", views.promote, name="approval-promote"),
    path("agents/<int:pk>/promotion-rule/", views.promotion_rule_save, name="approval-promotion-rule"),
]
