"""X-Twilio-Signature values computed by twilio-python's RequestValidator, for the webhook
tests to send through the sidecar: the SDK is the ground truth for the algorithm.

Env: CASES, a JSON list of {"token", "url", "params": [[name, value], ...] or null,
"body": text or null}. For a case with a body, the URL gets the bodySHA256 the validator
computes, and the URL alone is signed. Prints one JSON line: a list of {"url", "signature"}
in case order, each already checked with RequestValidator.validate.
"""
import json
import os

from twilio.request_validator import RequestValidator


class Multi:
    """Repeated names, as a web framework's MultiDict hands them to the validator."""

    def __init__(self, pairs):
        self.pairs = pairs

    def __iter__(self):
        return iter([name for name, _ in self.pairs])

    def __bool__(self):
        return bool(self.pairs)

    def getall(self, name):
        return [value for n, value in self.pairs if n == name]


out = []
for case in json.loads(os.environ["CASES"]):
    validator = RequestValidator(case["token"])
    url = case["url"]
    if case.get("body") is not None:
        sep = "&" if "?" in url else "?"
        url = url + sep + "bodySHA256=" + validator.compute_hash(case["body"])
        signature = validator.compute_signature(url, {})
        assert validator.validate(url, case["body"], signature)
    else:
        params = Multi(case.get("params") or [])
        signature = validator.compute_signature(url, params)
        assert validator.validate(url, params, signature)
    out.append({"url": url, "signature": signature})
print(json.dumps(out))
