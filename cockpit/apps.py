from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


class CockpitConfig(AppConfig):
    name = "cockpit"
    verbose_name = "Cockpit platform"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from cockpit import access, checks, live, signals  # noqa: F401  (signals: login audit)
        from cockpit.roles import TeamPerm, ensure_role_groups

        def can_view_team(user: User | AnonymousUser, ident: str) -> bool:
            return ident.isdigit() and access.has_team_perm(user, TeamPerm.VIEW, int(ident))

        live.register_topic("team", can_view_team)
        post_migrate.connect(ensure_role_groups, sender=self, dispatch_uid="cockpit.role_groups")
