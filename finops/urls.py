"""FinOps pages, mounted at /finops/ (see cockpit/urls.py). Names are global: the main nav links
to "finops"."""

from __future__ import annotations

from django.urls import path

from finops import views

urlpatterns = [
    path("", views.dashboard, name="finops"),
    path("chargeback.csv", views.chargeback, name="finops-chargeback"),
    path("routing/", views.routing, name="finops-routing"),
    path("budgets/", views.budgets, name="finops-budgets"),
    path("budgets/new/", views.budget_create, name="finops-budget-create"),
    path("budgets/<int:pk>/", views.budget_edit, name="finops-budget-edit"),
    path("budgets/<int:pk>/raise/", views.budget_raise, name="finops-budget-raise"),
]
