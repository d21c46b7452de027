"""The official Twilio Python SDK as a sidecar client: its local key as the SDK's username and
password, exactly as it would hold a Twilio API key.

Run by tests/sdk_interop.rs with SIDECAR_URL, ACCOUNT_SID, CLIENT_ID and CLIENT_SECRET set.
Prints one JSON line of results; any unexpected exception fails the run.
"""
import json
import os

for var in ("TWILIO_EDGE", "TWILIO_REGION"):
    os.environ.pop(var, None)

from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

base = os.environ["SIDECAR_URL"].rstrip("/")
client = Client(os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"], os.environ["ACCOUNT_SID"])
client.api.base_url = base
client.verify.base_url = f"{base}/verify.twilio.com"

results = {}
try:
    created = client.messages.create(to="+15005550006", from_="+15005550006", body="from a client")
    results["message_created"] = True
    results["account_sid"] = created.account_sid
except TwilioRestException as e:
    results["message_created"] = {"status": e.status, "code": e.code}

try:
    client.verify.v2.services("VA0123456789abcdef0123456789abcdef").verifications.create(
        to="+15005550006", channel="sms")
    results["verification"] = "allowed"
except TwilioRestException as e:
    results["verification"] = {"status": e.status, "code": e.code}

print(json.dumps(results))
