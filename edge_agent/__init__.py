"""MeterLink the gateway agent (sources, windows, durable buffer, MQTT publisher)."""
