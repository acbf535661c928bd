"""Scorers, one module each: every one rates all candidates in [0, 1] in one call (see routing/base.Scorer)."""
