"""Benchmarks of deflect_min (scripts, not tests): ``python -m benchmarks.peft_cost``."""
