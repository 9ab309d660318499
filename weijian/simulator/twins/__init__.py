"""Digital twins of each device kind: pure functions of a plan, a seed and the time."""
