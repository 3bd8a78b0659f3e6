from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("traces.urls_explorer")),  # the trace list and the trace view
    path("", include("traces.urls_incidents")),  # incidents, discovered agents, exports
]
