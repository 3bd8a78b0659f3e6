"""Receivers for Django's authentication signals (the framework's hook for log-ins)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from cockpit.audit import Actor, client_ip


@receiver(user_logged_in, dispatch_uid="cockpit.audit_login")
def _audit_login(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    from cockpit.services import user_login_record

    if request is not None:
        user_login_record(actor=Actor.for_user(user, ip=client_ip(request)), user=user)
