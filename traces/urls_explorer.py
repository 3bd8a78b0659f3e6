from __future__ import annotations

from django.urls import path

from traces import views

urlpatterns = [
    path("", views.trace_list, name="traces"),
    path("<int:pk>/", views.trace_detail, name="trace-detail"),
    path("<int:pk>/spans.json", views.trace_data, name="trace-data"),
    path("<int:pk>/spans/<str:span_id>/", views.span_detail, name="trace-span"),
    path("<int:pk>/narrative/", views.trace_narrative, name="trace-narrative"),
]
