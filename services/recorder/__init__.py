"""The recorder: every Realtime and call event → an append-only SQL archive with per-call hash chains,
projections (calls, transcript turns, tool calls, barge-ins), stereo recordings, a REST API and replay."""
