"""twilio-python's view of requests the sidecar signed for PKCV: for each request as the
Twilio stand-in received it, the `rqh` that the SDK's ClientValidationJwt computes from a
ValidationPayload of that request, and whether the sidecar's Twilio-Client-Validation token
verifies (ClientValidationJwt.from_jwt, RS256 with the registered public key).

Env: PUBLIC_KEY (PEM), REQUESTS: a JSON list of {"method", "path", "query", "authorization",
"host", "body" (text), "token"}. Prints one JSON line: a list of {"sdk_rqh", "token_claims"}.
"""
import json
import os

from twilio.http.validation_client import ValidationPayload
from twilio.jwt.validation import ClientValidationJwt

out = []
for r in json.loads(os.environ["REQUESTS"]):
    payload = ValidationPayload(
        method=r["method"],
        path=r["path"],
        query_string=r["query"],
        all_headers={"Authorization": r["authorization"], "Host": r["host"]},
        signed_headers=["authorization", "host"],
        body=r["body"],
    )
    sdk = ClientValidationJwt("AC", "SK", "CR", "unused", payload)
    decoded = ClientValidationJwt.from_jwt(r["token"], os.environ["PUBLIC_KEY"])
    out.append({"sdk_rqh": sdk._generate_payload()["rqh"], "token_claims": decoded.payload})
print(json.dumps(out))
