"""Fast limits (requests/min, tokens/min, concurrency, budget) with in-process and Redis back ends."""
