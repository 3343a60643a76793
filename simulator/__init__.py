"""MeterLink the simulated meter and gateway fleet."""
