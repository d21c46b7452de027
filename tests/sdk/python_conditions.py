"""The official Twilio Python SDK against parameter conditions: a message to an allowed
destination from a Messaging Service goes through; one to a destination outside the allowed
prefixes, or with a status callback on another host, is refused with Twilio's 403 / 70051.

Run by tests/sdk_interop.rs with SIDECAR_URL, ACCOUNT_SID and SERVICE_SID set. Prints one JSON
line of results.
"""
import json
import os

for var in ("TWILIO_EDGE", "TWILIO_REGION"):
    os.environ.pop(var, None)

from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

client = Client("SKanything", "no-secret-here", os.environ["ACCOUNT_SID"])
client.api.base_url = os.environ["SIDECAR_URL"].rstrip("/")
service = os.environ["SERVICE_SID"]


def attempt(**kwargs):
    try:
        client.messages.create(messaging_service_sid=service, body="Olá & bye +1", **kwargs)
        return "sent"
    except TwilioRestException as e:
        return {"status": e.status, "code": e.code, "message": e.msg}


print(json.dumps({
    "allowed": attempt(to="+15558675310"),
    "abroad": attempt(to="+8821234567"),
    "callback": attempt(to="+15558675310", status_callback="https://evil.example/cb"),
    "own_callback": attempt(to="+447700900123", status_callback="https://hooks.example.com/twilio/status"),
}))
