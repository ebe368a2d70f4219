"""Switchboard services: gateway, session, tools, recorder, localmodel."""
