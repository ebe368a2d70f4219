"""Media gateway: carrier media streams (Twilio Media Streams, browser WebSocket) ↔ the NATS bus.

Modules: :mod:`.app` (FastAPI routes), :mod:`.twilio` (TwiML and the Twilio socket state machine),
:mod:`.browser` (browser socket), :mod:`.call` (per-call bridge to the bus), :mod:`.outbound` (bounded
outbound queue and mark bookkeeping), :mod:`.security` (Twilio signatures, browser tokens).
"""
