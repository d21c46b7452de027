// twilio-node's AccessToken for the same inputs as a token the sidecar minted, both decoded and
// verified (HS256, the API key secret) with jsonwebtoken, printed as one JSON line.
//
// Env: KEY_SID, SECRET, ACCOUNT_SID, IDENTITY, TTL, APP_SID, ROOM, CHAT_SID, SIDECAR_TOKEN.
"use strict";

const twilio = require("twilio");
const jwt = require("jsonwebtoken");

const env = process.env;
const AccessToken = twilio.jwt.AccessToken;
const token = new AccessToken(env.ACCOUNT_SID, env.KEY_SID, env.SECRET, {
  identity: env.IDENTITY,
  ttl: Number(env.TTL),
});
token.addGrant(new AccessToken.VoiceGrant({ outgoingApplicationSid: env.APP_SID, incomingAllow: true }));
token.addGrant(new AccessToken.VideoGrant({ room: env.ROOM }));
token.addGrant(new AccessToken.ChatGrant({ serviceSid: env.CHAT_SID }));
const sdkToken = token.toJwt();

function decoded(t) {
  const { header } = jwt.decode(t, { complete: true });
  return { header, claims: jwt.verify(t, env.SECRET, { algorithms: ["HS256"] }) };
}

console.log(JSON.stringify({ sidecar: decoded(env.SIDECAR_TOKEN), sdk: decoded(sdkToken) }));
