"""The demo receptionist's tools as Realtime ``session.tools`` (JSON Schemas), used by tests, the benchmark
and the accuracy measurement in docs/localmodel.md. The authoritative agent spec is ``agents/*.yaml``; these
mirror the tool contracts of the brief: ``lookup_customer(phone)``, ``check_availability(date)``,
``book_appointment(name, date, time, phone?)``, ``cancel_appointment(appointment_id | phone + date)``,
``end_call(reason)``, ``transfer_to_human(reason)``.
"""

from __future__ import annotations

from typing import Any, Final

__all__ = ["DEMO_INSTRUCTIONS", "DEMO_TOOLS"]


def _fn(name: str, description: str, properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "function", "name": name, "description": description,
            "parameters": {"type": "object", "properties": properties, "required": required}}


DEMO_TOOLS: Final[list[dict[str, Any]]] = [
    _fn("lookup_customer", "Look up a customer by phone number.",
        {"phone": {"type": "string", "description": "Phone number in E.164"}}, ["phone"]),
    _fn("check_availability", "Check which appointment times are free on a date.",
        {"date": {"type": "string", "format": "date", "description": "YYYY-MM-DD"}}, ["date"]),
    _fn("book_appointment", "Book an appointment for the caller.",
        {"name": {"type": "string", "description": "Caller's full name"},
         "date": {"type": "string", "format": "date", "description": "YYYY-MM-DD"},
         "time": {"type": "string", "description": "HH:MM, 24 hour"},
         "phone": {"type": "string", "description": "Phone number; defaults to the caller ID"}},
        ["name", "date", "time"]),
    _fn("cancel_appointment", "Cancel an existing appointment.",
        {"appointment_id": {"type": "integer"}, "phone": {"type": "string"},
         "date": {"type": "string", "format": "date"}}, []),
    _fn("end_call", "End the call after saying goodbye.",
        {"reason": {"type": "string"}}, ["reason"]),
    _fn("transfer_to_human", "Transfer the caller to a human receptionist.",
        {"reason": {"type": "string"}}, ["reason"]),
]

DEMO_INSTRUCTIONS: Final = (
    "You are the receptionist of Acme Dental. Be brief and friendly.\n"
    "Greeting: Hello, thank you for calling Acme Dental. How can I help you today?\n"
    "Book, check or cancel appointments, or transfer the caller to a human."
)
