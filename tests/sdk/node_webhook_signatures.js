// X-Twilio-Signature values computed by twilio-node (getExpectedTwilioSignature,
// getExpectedBodyHash), for the webhook tests to send through the sidecar: the SDK is the
// ground truth for the algorithm.
//
// Env: CASES, a JSON list of {"token", "url", "params": [[name, value], ...] or null,
// "body": text or null}. Prints one JSON line: a list of {"url", "signature"} in case order,
// each already checked with validateRequest / validateRequestWithBody.
"use strict";

const twilio = require("twilio");
const webhooks = require("twilio/lib/webhooks/webhooks");

const out = [];
for (const c of JSON.parse(process.env.CASES)) {
  let url = c.url;
  let signature;
  if (c.body !== null && c.body !== undefined) {
    url += (url.includes("?") ? "&" : "?") + "bodySHA256=" + webhooks.getExpectedBodyHash(c.body);
    signature = webhooks.getExpectedTwilioSignature(c.token, url, {});
    if (!twilio.validateRequestWithBody(c.token, signature, url, c.body)) throw new Error("self-check failed");
  } else {
    // Repeated names become arrays, as Express' urlencoded parser hands them over.
    const params = {};
    for (const [name, value] of c.params || []) {
      if (name in params) params[name] = [].concat(params[name], value);
      else params[name] = value;
    }
    signature = webhooks.getExpectedTwilioSignature(c.token, url, params);
    if (!twilio.validateRequest(c.token, signature, url, params)) throw new Error("self-check failed");
  }
  out.push({ url, signature });
}
console.log(JSON.stringify(out));
