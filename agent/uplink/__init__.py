"""The uplink: MQTT 5 delivery of the outbox to the platform, and the platform's commands."""
