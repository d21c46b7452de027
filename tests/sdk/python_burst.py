"""twilio-python sending a burst of messages through the sidecar from 10 threads at once —
more than the account's concurrency at Twilio. twilio-python does not retry a 429 itself, so
every message that succeeds here is one the sidecar queued or retried for it.

Run by tests/sdk_interop.rs with SIDECAR_URL, ACCOUNT_SID and COUNT set. Prints one JSON line:
{"sent": N, "raised": [...]}.
"""
import json
import os
from concurrent.futures import ThreadPoolExecutor

for var in ("TWILIO_EDGE", "TWILIO_REGION"):
    os.environ.pop(var, None)

from twilio.base.exceptions import TwilioRestException  # noqa: E402
from twilio.rest import Client  # noqa: E402

client = Client("SKanything", "no-secret-here", os.environ["ACCOUNT_SID"])
client.api.base_url = os.environ["SIDECAR_URL"].rstrip("/")


def send(i):
    try:
        client.messages.create(to="+15558675310", from_="+15005550006", body=f"message {i}")
        return None
    except TwilioRestException as e:
        return {"status": e.status, "code": e.code}


with ThreadPoolExecutor(max_workers=10) as pool:
    results = list(pool.map(send, range(int(os.environ["COUNT"]))))
raised = [r for r in results if r is not None]
print(json.dumps({"sent": len(results) - len(raised), "raised": raised}))
