from __future__ import annotations

from django.urls import path

from traces import views

urlpatterns = [
    path("", views.trace_list, name="traces"),
]
