from __future__ import annotations

from typing import TYPE_CHECKING

from django.apps import AppConfig
from django.db.models.signals import post_migrate

if TYPE_CHECKING:
    from django.contrib.auth.models import AnonymousUser, User


def _default_policy(**kwargs: object) -> None:
    """A fresh installation is governed by the default policy (the autonomy tiers) from the
    start; it is created once, as version 1 of the global policy, by the first ``migrate``."""
    from approvals.cedar import DEFAULT_GLOBAL_POLICY
    from approvals.models import GLOBAL_SCOPE, ActivePolicy, Policy

    if not Policy.objects.filter(scope=GLOBAL_SCOPE).exists():
        policy = Policy.objects.create(
            scope=GLOBAL_SCOPE,
            version=1,
            source=DEFAULT_GLOBAL_POLICY,
            comment="Cockpit's default: the autonomy tiers.",
            author_label="Cockpit",
        )
        ActivePolicy.objects.create(scope=GLOBAL_SCOPE, policy=policy, activated_by_label="Cockpit")


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Approvals"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from approvals.gate import CedarApprovalGate
        from cockpit import access, live
        from cockpit.roles import TeamPerm
        from fleet import seams

        seams.register(approval_gate=CedarApprovalGate())

        def can_view(user: User | AnonymousUser, ident: str) -> bool:
            from approvals.models import ApprovalRequest

            if not ident.isdigit():
                return False
            team_id = ApprovalRequest.objects.filter(pk=int(ident)).values_list("team_id", flat=True).first()
            return team_id is not None and access.has_team_perm(user, TeamPerm.VIEW, team_id)

        live.register_topic("approval", can_view)
        post_migrate.connect(_default_policy, sender=self, dispatch_uid="approvals.default_policy")
