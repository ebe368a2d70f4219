"""Tool workers: nats.micro endpoints ``tools.<name>`` backed by a real database (SQLAlchemy 2 async).

Modules, one concern each:

- :mod:`.framework` — :class:`~.framework.Tool`, the ``@tool`` decorator, request/result/context types;
- :mod:`.validation` — JSON Schema validation with messages safe to speak to a caller;
- :mod:`.worker` — :class:`~.worker.ToolWorker`: endpoints, registry, deadlines, idempotency;
- :mod:`.results` — the ``tool_results`` store that makes a retried ``tool_call_id`` return its first result,
  and the commit-time deadline check;
- :mod:`.client` — :func:`~.client.call_tool`, the caller side (one absolute deadline, hedged attempts, 503 retries);
- :mod:`.db`, :mod:`.models`, ``migrations/`` — engine, tables, Alembic (version table ``alembic_version_tools``);
- :mod:`.clinic`, :mod:`.receptionist`, :mod:`.seed` — the demo receptionist domain.

See ``docs/tools.md``.
"""
