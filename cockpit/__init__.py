"""Cockpit: the operator cockpit for fleets of AI agents (the platform package)."""

from __future__ import annotations

from cockpit.celery import app as celery_app

__all__ = ["celery_app"]
