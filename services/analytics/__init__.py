"""Downstream analytics: a durable JetStream consumer of CALLS and RT computing per-call KPIs into SQL,
``GET /kpis`` and Prometheus metrics (docs/analytics.md)."""
