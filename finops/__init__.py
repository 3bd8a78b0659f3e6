"""FinOps: prices, cost attribution, rollups, budgets and forecasts."""
