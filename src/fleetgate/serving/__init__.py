"""The hot path: completion requests from the client's bytes to the engine's and back (see handler.py)."""
