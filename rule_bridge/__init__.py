"""Rule bridge: MQTT → Kinesis, the local stand-in for the IoT Core topic rule."""
