from __future__ import annotations

from django.urls import path

from finops import views

urlpatterns = [
    path("", views.dashboard, name="finops"),
]
