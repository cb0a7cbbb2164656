"""Chaos testing of a whole local cluster: faults injected by a seeded, replayable schedule, with
the invariants of DESIGN.md checked after every round (see invariants.py)."""
