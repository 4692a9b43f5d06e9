"""Developer tools: synthetic models in the real file layouts for tests and demos (never used by generation)."""
