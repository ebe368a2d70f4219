"""Switchboard's shared package: config, subjects, bus, audio, telemetry, runtime and the CLI."""
