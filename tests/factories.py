"""factory_boy factories. Rows that carry permissions are made through services, so the
guardian permissions and audit rows are the real ones."""

from __future__ import annotations

import functools

import factory
from django.contrib.auth import get_user_model

from cockpit.audit import Actor
from cockpit.models import Team

PASSWORD = "correct-horse-battery-staple"
SYSTEM = Actor.system("tests")


@functools.cache
def password_hash() -> str:
    """Hashed once per session: the real (deliberately slow) hasher, so processes started by
    the tests accept it, without paying for it on every user."""
    from django.contrib.auth.hashers import make_password

    return make_password(PASSWORD)


class TeamFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Team
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"team-{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("-", " ").title())


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.com")
    password = factory.LazyFunction(password_hash)

    @factory.post_generation
    def roles(self, create: bool, extracted: list[tuple[Team, str]] | None, **kwargs: object) -> None:
        """``UserFactory(roles=[(team, "operator"), ...])`` grants roles through the service."""
        from cockpit.services import membership_grant

        for team, role in extracted or []:
            membership_grant(actor=SYSTEM, user=self, team=team, role=role)
