"""Carrier media-stream protocol models (Twilio Media Streams), shared by the gateway and the caller simulator."""
