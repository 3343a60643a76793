"""MeterLink the stream consumer (decode, dedupe, detect, alerts, archive)."""
