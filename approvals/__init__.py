"""Approvals: policy, approval requests, escalation and notifications."""
