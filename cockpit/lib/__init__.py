"""Model-free helpers used across Cockpit (no Django models imported here)."""
