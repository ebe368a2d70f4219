"""Test doubles shipped for benches and tests (scripted Realtime sessions, an echo Realtime peer); services never
import this package."""
