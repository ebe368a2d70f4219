"""The deterministic dialogue policy (docs/localmodel.md)."""

from __future__ import annotations

import datetime as dt
import json

from services.localmodel.demo_tools import DEMO_INSTRUCTIONS, DEMO_TOOLS
from services.localmodel.policy import DialoguePolicy, greeting_from_instructions, is_read_only

TODAY = dt.date(2026, 11, 22)


def policy() -> DialoguePolicy:
    p = DialoguePolicy(today=lambda: TODAY)
    p.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    return p


def test_greeting_sources() -> None:
    assert greeting_from_instructions(DEMO_INSTRUCTIONS).startswith("Hello, thank you for calling Acme Dental")
    assert greeting_from_instructions("You are a bot. Be nice.") == "You are a bot."
    assert greeting_from_instructions("") == "Hello, how can I help you today?"


def test_read_only_classification() -> None:
    assert is_read_only("check_availability") and is_read_only("lookup_customer") and is_read_only("end_call")
    assert not is_read_only("book_appointment") and not is_read_only("cancel_appointment")


def test_demo_booking_dialogue() -> None:
    p = policy()
    r = p.on_user("hi i would like to book an appointment for tomorrow at ten")
    assert r.call is None and "name" in r.say.lower()
    r = p.on_user("my name is john smith")
    assert r.call is None and "shall i go ahead" in r.say.lower()
    assert "10 AM" in r.say and "November 23" in r.say
    r = p.on_user("yes please")
    assert r.call is not None and r.call.name == "book_appointment"
    assert r.call.arguments == {"name": "John Smith", "date": "2026-11-23", "time": "10:00"}
    r = p.on_tool_output("book_appointment", r.call.arguments, json.dumps({"appointment_id": 7}))
    assert "booked" in r.say and "anything else" in r.say.lower()
    r = p.on_user("no thank you")
    assert r.call is not None and r.call.name == "end_call" and r.call.arguments["reason"]
    r = p.on_tool_output("end_call", r.call.arguments, "{}")
    assert "goodbye" in r.say.lower()


def test_read_only_tool_is_called_directly_and_summarised() -> None:
    p = policy()
    r = p.on_user("could you check availability on monday")
    assert r.call is not None and r.call.name == "check_availability"
    assert r.call.arguments == {"date": "2026-11-23"}
    r = p.on_tool_output("check_availability", r.call.arguments, json.dumps({"available": ["09:00", "14:30"]}))
    assert "9 AM" in r.say and "2:30 PM" in r.say


def test_errors_unknown_requests_transfer_and_no_at_readback() -> None:
    p = policy()
    r = p.on_user("what is the weather on mars")
    assert r.call is None and "sorry" in r.say.lower()
    r = p.on_tool_output("book_appointment", {}, json.dumps({"error": {"message": "that slot is taken"}}))
    assert "that slot is taken" in r.say
    r = p.on_user("i want to speak to a human")
    assert r.call is not None and r.call.name == "transfer_to_human"
    p = policy()
    p.on_user("cancel my appointment for tomorrow")
    assert p.confirming
    r = p.on_user("no")
    assert r.call is None and "won't" in r.say


def test_text_dtmf_item_does_not_crash_and_args_persist_across_turns() -> None:
    p = policy()
    assert p.on_user("DTMF 1").call is None
    p.on_user("book an appointment")
    p.on_user("tomorrow")
    r = p.on_user("at eleven thirty")
    assert r.call is None and "name" in r.say.lower()
    assert p.args == {"date": "2026-11-23", "time": "11:30"}


def test_keypad_one_confirms_and_two_declines_a_read_back() -> None:
    p = policy()
    p.on_user("book an appointment for tomorrow at ten")
    p.on_user("my name is john smith")
    assert p.confirming
    r = p.on_user("DTMF 1")
    assert r.call is not None and r.call.name == "book_appointment" and r.call.arguments["time"] == "10:00"
    p.on_user("cancel my appointment for tomorrow")
    assert p.confirming
    r = p.on_user("DTMF 2")
    assert r.call is None and "won't" in r.say


def test_greetings_are_answered_as_greetings() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    assert policy.on_user("Say hello.").say == "Hello! How can I help you today?"
    assert policy.on_user("good morning").say == "Good morning! How can I help you today?"
    assert policy.on_user("hello what is the weather on mars").say.startswith("Sorry")


def test_a_bare_name_answers_the_name_question() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    assert policy.on_user("i need an appointment for monday at ten").say == "May I have your name, please?"
    reply = policy.on_user("robert brown")
    assert policy.args["name"] == "Robert Brown" and "Shall I go ahead?" in reply.say
    assert policy.args["time"] == "10:00"
    fresh = DialoguePolicy(today=lambda: TODAY)
    fresh.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    fresh.on_user("book an appointment for john")  # not asked: "john" alone is no name
    assert "name" not in fresh.args


def test_yes_and_no_are_read_as_phrases() -> None:
    from services.localmodel.policy import says_no, says_yes

    assert says_yes(["yes", "that's", "right"]) and not says_no(["yes", "that's", "right"])
    assert says_no(["no", "that's", "all"]) and says_no(["that's", "it", "thank", "you"])
    assert not says_yes(["yes", "no"])


def test_a_booking_is_confirmed_with_yes_thats_right_and_a_bare_hour_answers_the_time() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    assert policy.on_user("i'd like to make an appointment for tomorrow").say == "May I have your name, please?"
    assert policy.on_user("mary jones").say == "What time would you like?"
    assert "Shall I go ahead?" in policy.on_user("eleven").say
    reply = policy.on_user("yes that's right")
    assert reply.call is not None and reply.call.arguments["time"] == "11:00"


def test_cancel_my_booking_is_a_cancellation() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    assert policy.best_tool(["cancel", "my", "booking", "on", "friday"])[0] == "cancel_appointment"
    assert policy.best_tool(["i", "would", "like", "to", "see", "the", "dentist"])[0] == "book_appointment"


def test_a_tool_error_that_starts_with_sorry_is_not_said_twice() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    reply = policy.on_tool_output("book_appointment", {}, json.dumps({"error": {"message": "Sorry, 10:00 is taken."}}))
    assert reply.say.startswith("Sorry, 10:00 is taken. Is there anything else")


def test_a_question_the_client_put_in_the_conversation_sets_what_was_asked() -> None:
    """Assistant items created by the client (a conversation rebuilt after a handover, another model's words)
    count like the policy's own replies: the argument asked for, the read-back awaiting yes, "anything else"."""
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    policy.on_user("i need an appointment tomorrow")
    policy.on_assistant("Great. And what time works for you?")
    assert policy.asked == "time" and not policy.confirming
    assert policy.on_user("eleven").say == "May I have your name, please?"
    policy.on_assistant("Sure. Could I get your full name?")
    assert policy.asked == "name"
    policy.on_user("robert brown")
    policy.on_assistant("Robert Brown, tomorrow at 11. Is that right?")
    assert policy.confirming and policy.asked is None
    policy.on_function_call("book_appointment", {"name": "Robert Brown", "date": "2026-11-23", "time": "11:00"})
    assert policy.pending is None and not policy.confirming
    assert policy.last_call is not None and policy.last_call.name == "book_appointment"
    policy.on_assistant("You're all set. Anything else?")
    assert policy.offered_more and policy.asked is None
    reply = policy.on_user("no thanks")
    assert reply.call is not None and reply.call.name == "end_call"


def test_a_statement_the_client_put_in_the_conversation_asks_nothing() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    policy.on_user("i need an appointment tomorrow at ten")
    assert policy.asked == "name"
    policy.on_assistant("Your name is needed for the booking.")
    assert policy.asked is None


def test_a_read_back_is_corrected_with_a_bare_time() -> None:
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    policy.on_user("could you book me in on tuesday at nine")
    assert "Shall I go ahead?" in policy.on_user("my name is david clark").say
    reply = policy.on_user("no, make it ten in the morning")
    assert "10 AM" in reply.say and policy.confirming
    reply = policy.on_user("no eleven")
    assert "11 AM" in reply.say and policy.confirming
    reply = policy.on_user("actually could we do half past two instead")
    assert "2:30 PM" in reply.say and policy.confirming
    reply = policy.on_user("sorry i meant eleven")
    assert "11 AM" in reply.say and policy.confirming
    reply = policy.on_user("yes")
    assert reply.call is not None and reply.call.arguments["time"] == "11:00"


def test_a_slot_given_before_it_is_asked_for_is_kept() -> None:
    """One slot at a time, in the caller's order: a bare hour while the name is asked for is the time; a
    known full name after "for" is the name."""
    policy = DialoguePolicy(today=lambda: TODAY)
    policy.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    policy.on_user("i'd like to book an appointment")
    policy.on_user("tomorrow")
    assert policy.on_user("half past four").say == "May I have your name, please?"
    assert policy.args["time"] == "16:30"
    fresh = DialoguePolicy(today=lambda: TODAY)
    fresh.configure(DEMO_TOOLS, DEMO_INSTRUCTIONS)
    assert "Shall I go ahead?" in fresh.on_user("book an appointment tomorrow at ten for mary jones").say
    assert fresh.args["name"] == "Mary Jones"
    assert fresh.on_user("no thank you").call is None  # a no to the read-back sets no time
