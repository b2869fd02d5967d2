"""The running station: the supervisor that starts and stops every stage, its health, the
platform command handlers, systemd notification and clock monitoring."""
