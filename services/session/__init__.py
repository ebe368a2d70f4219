"""The session service: one OpenAI Realtime (GA) model session per call.

It takes each ``call.<id>.started`` once across instances, opens the model WebSocket, forwards caller audio,
writes every client and server Realtime event to the ``rt.<id>.*`` log, dispatches tools over NATS, handles
barge-in from carrier mark echoes, runs flow states and ends the call on a tool's control directive.
See ``docs/session.md``.
"""
