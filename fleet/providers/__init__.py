"""Model providers: one small interface (``base.Provider``) over OpenAI-compatible servers,
Anthropic, and the simulated provider used by the demo and the tests."""
