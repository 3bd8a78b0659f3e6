"""Create the five role groups with the permissions each role grants organisation-wide."""

from __future__ import annotations

from django.contrib.auth.management import create_permissions
from django.db import migrations

# A frozen copy of cockpit.roles.ROLE_PERMISSIONS as of this migration; a later change to the
# roles comes with a migration of its own.
ROLE_PERMISSIONS = {
    "viewer": ["view_team"],
    "operator": ["view_team", "operate_team", "view_team_audit"],
    "approver": ["view_team", "approve_team"],
    "finance": ["view_team", "view_team_costs", "view_team_audit"],
    "admin": ["view_team", "operate_team", "approve_team", "view_team_costs", "view_team_audit", "manage_team"],
}


def create_role_groups(apps, schema_editor):
    # Permissions are normally created after all migrations ran; create Team's now.
    app_config = apps.get_app_config("cockpit")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0)
    app_config.models_module = None

    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, codenames in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.get_or_create(name=role)
        perms = Permission.objects.filter(content_type__app_label="cockpit", codename__in=codenames)
        group.permissions.set(perms)


def remove_role_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name__in=list(ROLE_PERMISSIONS)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("cockpit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_role_groups, remove_role_groups)]
