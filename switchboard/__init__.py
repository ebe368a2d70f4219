"""Switchboard developer tooling: the `switchboard` CLI, the caller simulator, scenarios, the local supervisor and
the embedded nats-server. It may import `services`; no service imports it."""
