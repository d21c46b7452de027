"""twilio-python's AccessToken for the same inputs as a token the sidecar minted, both decoded
with PyJWT (the sidecar's verified with the API key secret), printed as one JSON line.

Env: KEY_SID, SECRET, ACCOUNT_SID, IDENTITY, TTL, APP_SID, ROOM, CHAT_SID, SIDECAR_TOKEN.
"""
import json
import os

import jwt
from twilio.jwt.access_token import AccessToken
from twilio.jwt.access_token.grants import ChatGrant, VideoGrant, VoiceGrant

env = os.environ
sdk = AccessToken(env["ACCOUNT_SID"], env["KEY_SID"], env["SECRET"],
                  identity=env["IDENTITY"], ttl=int(env["TTL"]))
sdk.add_grant(VoiceGrant(outgoing_application_sid=env["APP_SID"], incoming_allow=True))
sdk.add_grant(VideoGrant(room=env["ROOM"]))
sdk.add_grant(ChatGrant(service_sid=env["CHAT_SID"]))
sdk_token = sdk.to_jwt()

def decoded(token):
    return {
        "header": jwt.get_unverified_header(token),
        # Verifies the signature with the secret (and the time claims).
        "claims": jwt.decode(token, env["SECRET"], algorithms=["HS256"]),
    }

print(json.dumps({"sidecar": decoded(env["SIDECAR_TOKEN"]), "sdk": decoded(sdk_token)}))
