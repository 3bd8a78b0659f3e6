"""Fleet: teams' agents, their versions and tools, runs and the durable agent runtime."""
