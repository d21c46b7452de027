"""Scenarios with the official Twilio Python SDK, configured only by base URL — or, with
TRANSPARENT=1, not configured at all: HTTPS_PROXY and REQUESTS_CA_BUNDLE from the environment
do it (the sidecar's transparent mode).

Run by tests/sdk_interop.rs with SIDECAR_URL (the sidecar's proxy address) and ACCOUNT_SID set.
Prints one JSON line of results; any unexpected exception fails the run (non-zero exit).
"""
import json
import os
import sys

# Edge/region settings rewrite the host name and would bypass the base URL override.
for var in ("TWILIO_EDGE", "TWILIO_REGION"):
    os.environ.pop(var, None)

from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

base = os.environ["SIDECAR_URL"].rstrip("/")
account = os.environ["ACCOUNT_SID"]

# The SDK insists on credentials; these are not Twilio's and the sidecar strips them.
client = Client(account, "not-a-secret-the-sidecar-holds-the-real-one")
if os.environ.get("TRANSPARENT") != "1":
    client.api.base_url = base                                # api.twilio.com is the default host
    client.verify.base_url = f"{base}/verify.twilio.com"      # other products: host-prefix form
    client.conversations.base_url = f"{base}/conversations.twilio.com"
    client.lookups.base_url = f"{base}/lookups.twilio.com"

results = {}

created = client.messages.create(to="+15005550006", from_="+15005550006", body="hello from the sidecar")
results["message_created"] = created.sid
# The stand-in answers with the spec's examples, so the fetched SID is the example's.
fetched = client.messages(created.sid).fetch()
assert fetched.sid.startswith(("SM", "MM")), fetched.sid
results["message_fetched"] = fetched.sid
results["messages_listed"] = len(client.messages.list(limit=3))

verification = client.verify.v2.services("VA" + "a" * 32).verifications.create(to="+15005550006", channel="sms")
results["verification"] = verification.sid

# Pages through two pages: the second is fetched from the (rewritten) next_page_url.
conversations = client.conversations.v1.conversations.list(limit=2, page_size=1)
assert len(conversations) == 2, len(conversations)
results["conversations_paged"] = len(conversations)

number = client.lookups.v2.phone_numbers("+15108675310").fetch()
results["lookup"] = number.phone_number

try:
    client.calls.create(to="+15005550006", from_="+15005550006", url="http://demo.twilio.com/docs/voice.xml")
except TwilioRestException as e:
    assert e.status == 403 and e.code == 70051, (e.status, e.code, e.msg)
    results["denied"] = {"status": e.status, "code": e.code, "message": e.msg}
else:
    sys.exit("calls.create was not denied")

print(json.dumps(results))
