"""OTLP/HTTP export: a service process with OTEL_EXPORTER_OTLP_ENDPOINT set sends real protobuf spans that a
local receiver decodes (ExportTraceServiceRequest), with service.name and the messaging attributes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from switchboard import natsserver

SCRIPT = textwrap.dedent("""
    import asyncio, sys
    from shared import subjects
    from shared.config import load_settings
    from shared.runtime import start_service, stop_service

    async def main() -> None:
        ctx = await start_service("otlptest", load_settings(nats_url=sys.argv[1]))
        await ctx.bus.publish(subjects.call_started("otlp1"), {"call_id": "otlp1"}, call_id="otlp1")
        await stop_service(ctx)
        ctx.telemetry.shutdown()

    asyncio.run(main())
""")


class _Receiver(BaseHTTPRequestHandler):
    requests: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.requests.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def test_spans_reach_an_otlp_http_receiver_as_protobuf(nats_url: str, tmp_path: Path) -> None:
    port = natsserver.free_port()
    server = HTTPServer(("127.0.0.1", port), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
               "OTEL_METRIC_EXPORT_INTERVAL": "100000", "SWITCHBOARD_DATA_DIR": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-c", SCRIPT, nats_url], env=env, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
    finally:
        server.shutdown()
    traces = [(ct, body) for path, ct, body in _Receiver.requests if path == "/v1/traces"]
    assert traces, [path for path, _, _ in _Receiver.requests]
    spans = []
    for content_type, body in traces:
        assert content_type == "application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource_spans in request.resource_spans:
            attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            assert attrs["service.name"] == "switchboard-otlptest"
            for scope in resource_spans.scope_spans:
                spans.extend(scope.spans)
    publish = [s for s in spans if s.name == "publish call.{call_id}.started"]
    assert len(publish) == 1
    attrs = {a.key: a.value.string_value for a in publish[0].attributes}
    assert attrs["messaging.system"] == "nats"
    assert attrs["messaging.destination.name"] == "call.otlp1.started"
    assert attrs["switchboard.call_id"] == "otlp1"
    assert len(publish[0].trace_id) == 16
