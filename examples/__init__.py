"""Runnable examples: a CSV of readings with planted faults for ``cloud-consumer replay``."""
