from __future__ import annotations

from django.db import models
from django.utils import timezone


class Ticket(models.Model):
    ref = models.CharField(max_length=20, unique=True)
    customer = models.CharField(max_length=120)
    email = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    order_total = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.ref}: {self.subject}"


class Refund(models.Model):
    idempotency_key = models.CharField(max_length=80, unique=True)
    ticket_ref = models.CharField(max_length=20)
    amount = models.DecimalField(max_digits=10, decimal_places=2)
    currency = models.CharField(max_length=3)
    reason = models.TextField(blank=True)
    issued_at = models.DateTimeField(default=timezone.now)
    reversal_key = models.CharField(max_length=80, unique=True, null=True, blank=True)
    reversed_at = models.DateTimeField(null=True, blank=True)


class EmailMessage(models.Model):
    idempotency_key = models.CharField(max_length=80, unique=True)
    to = models.EmailField()
    subject = models.CharField(max_length=200)
    body = models.TextField()
    sent_at = models.DateTimeField(default=timezone.now)


class Invoice(models.Model):
    ref = models.CharField(max_length=20, unique=True)
    vendor = models.CharField(max_length=120)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    currency = models.CharField(max_length=3, default="EUR")
    text = models.TextField()


class LedgerPosting(models.Model):
    idempotency_key = models.CharField(max_length=80, unique=True)
    invoice_ref = models.CharField(max_length=20)
    account = models.CharField(max_length=20)
    amount = models.DecimalField(max_digits=12, decimal_places=2)
    posted_at = models.DateTimeField(default=timezone.now)
    reversal_key = models.CharField(max_length=80, unique=True, null=True, blank=True)
    reversed_at = models.DateTimeField(null=True, blank=True)


class ReviewComment(models.Model):
    idempotency_key = models.CharField(max_length=80, unique=True)
    repository = models.CharField(max_length=120)
    pull_request = models.PositiveIntegerField()
    verdict = models.CharField(max_length=20)
    body = models.TextField()
    posted_at = models.DateTimeField(default=timezone.now)
