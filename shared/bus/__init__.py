"""The NATS bus: every publish, request and subscription of every service goes through here.

This module is the one place that knows about message headers, serialization and trace propagation
(docs/architecture.md, "Subjects and streams" and "Traces"); handlers receive an :class:`Envelope` and run
inside the restored trace context, and never touch headers or spans themselves.

Headers on every message (:class:`Headers`): ``Nats-Msg-Id`` (unique event id; JetStream de-duplication),
``traceparent`` (W3C, injected with the global OTel propagator), ``Switchboard-Call-Id``,
``Switchboard-Source``, ``Switchboard-Seq`` (monotonic per call and source, no gaps), ``Switchboard-Ts``
(unix ns at publish), ``Switchboard-Audio-Format`` on audio and ``Switchboard-Epoch`` (the call owner's epoch,
:meth:`Bus.set_epoch`) on what a session instance publishes for a call it owns.

Spans follow the OTel messaging semantic conventions (``messaging.system="nats"``,
``messaging.destination.name``, ``messaging.destination.template``, ``messaging.operation.type``): a PRODUCER
span ``publish <template>`` per publish and a CONSUMER span ``process <template>`` per handled message,
except for high-rate media subjects (audio frames, audio deltas), which carry ``traceparent`` but get no span
each — 50 spans a second per call would cost more than the audio path itself.

Modules, each importing only the ones before it: ``wire`` (the nats-py client subclass), ``envelope``
(messages, headers, the :class:`~shared.bus.envelope.Replier`/:class:`~shared.bus.envelope.Dispatcher`
protocols), ``links``, ``acks`` (JetStream publish acks), ``connection`` (connect with retries), ``streams``
and ``micro`` (parts the bus is composed of), ``client`` (the :class:`Bus`).
"""


from shared.bus.client import Bus, FailureCallback
from shared.bus.envelope import (
    Envelope,
    Handler,
    Headers,
    Payload,
    decode_headers_seq,
    destination_template,
    encode_payload,
    epoch_of,
    is_high_rate,
)
from shared.bus.links import batch_span, links_for

__all__ = [
    "Bus",
    "Envelope",
    "FailureCallback",
    "Handler",
    "Headers",
    "Payload",
    "batch_span",
    "decode_headers_seq",
    "destination_template",
    "encode_payload",
    "epoch_of",
    "is_high_rate",
    "links_for",
]
