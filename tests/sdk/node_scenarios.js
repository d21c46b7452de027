// Scenarios with the official Twilio Node SDK, configured only by base URL — or, with
// TRANSPARENT=1, not configured at all: HTTP_PROXY and NODE_EXTRA_CA_CERTS from the environment
// do it (the sidecar's transparent mode).
//
// Run by tests/sdk.rs with SIDECAR_URL and ACCOUNT_SID set. Prints one JSON line of results;
// any unexpected error fails the run (non-zero exit).
"use strict";

// Edge/region settings rewrite the host name and would bypass the base URL override.
delete process.env.TWILIO_EDGE;
delete process.env.TWILIO_REGION;

const twilio = require("twilio");

const base = process.env.SIDECAR_URL.replace(/\/$/, "");
const account = process.env.ACCOUNT_SID;

async function main() {
  // The Node SDK refuses to start without credentials; these are dummies the sidecar strips.
  const client = twilio(account, "not-a-secret-the-sidecar-holds-the-real-one");
  if (process.env.TRANSPARENT !== "1") {
    client.api.baseUrl = base; // api.twilio.com is the default host
    client.verify.baseUrl = `${base}/verify.twilio.com`; // other products: host-prefix form
    client.conversations.baseUrl = `${base}/conversations.twilio.com`;
    client.lookups.baseUrl = `${base}/lookups.twilio.com`;
  }

  const results = {};
  const created = await client.messages.create({ to: "+15005550006", from: "+15005550006", body: "hello from the sidecar" });
  results.message_created = created.sid;
  // The stand-in answers with the spec's examples, so the fetched SID is the example's.
  const fetched = await client.messages(created.sid).fetch();
  if (!/^(SM|MM)/.test(fetched.sid)) throw new Error(`fetched ${fetched.sid}`);
  results.message_fetched = fetched.sid;
  results.messages_listed = (await client.messages.list({ limit: 3 })).length;

  const verification = await client.verify.v2.services("VA" + "a".repeat(32)).verifications.create({ to: "+15005550006", channel: "sms" });
  results.verification = verification.sid;

  // Pages through two pages: the second is fetched from the (rewritten) next_page_url.
  const conversations = await client.conversations.v1.conversations.list({ limit: 2, pageSize: 1 });
  if (conversations.length !== 2) throw new Error(`paged ${conversations.length} conversations`);
  results.conversations_paged = conversations.length;

  const number = await client.lookups.v2.phoneNumbers("+15108675310").fetch();
  results.lookup = number.phoneNumber;

  try {
    await client.calls.create({ to: "+15005550006", from: "+15005550006", url: "http://demo.twilio.com/docs/voice.xml" });
    throw new Error("calls.create was not denied");
  } catch (e) {
    if (!(e instanceof twilio.RestException) || e.status !== 403 || e.code !== 70051) {
      throw e;
    }
    results.denied = { status: e.status, code: e.code, message: e.message };
  }
  console.log(JSON.stringify(results));
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
