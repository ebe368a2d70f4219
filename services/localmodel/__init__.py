"""Offline speech-to-speech server speaking the OpenAI Realtime GA protocol (docs/localmodel.md)."""
