from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from cockpit.audit import audit_verify_snapshot


class Command(BaseCommand):
    help = "Walk the audit log's hash chain and print 'intact' or the first broken link (exit status 1 when broken)."

    def handle(self, *args: Any, **options: Any) -> None:
        report = audit_verify_snapshot()
        if report.intact:
            self.stdout.write(str(report))
            return
        self.stderr.write(str(report))
        raise SystemExit(1)
