"""The web console served by the recorder under ``/ui/`` (server-rendered HTML, SVG charts, local assets only):
calls list, call page (transcript, recording, timeline, waterfall, audit, cost, KPIs, live view) and the KPI
dashboard. Routes: :func:`services.recorder.ui.routes.add_console`."""
