// The official Twilio Node SDK as a sidecar client: its local key as the SDK's username and
// password (twilio(id, secret, { accountSid })), exactly as it would hold a Twilio API key.
//
// Run by tests/sdk_interop.rs with SIDECAR_URL, ACCOUNT_SID, CLIENT_ID and CLIENT_SECRET set.
// Prints one JSON line of results; any unexpected error fails the run.
"use strict";

delete process.env.TWILIO_EDGE;
delete process.env.TWILIO_REGION;

const twilio = require("twilio");

const base = process.env.SIDECAR_URL.replace(/\/$/, "");

async function main() {
  const client = twilio(process.env.CLIENT_ID, process.env.CLIENT_SECRET, {
    accountSid: process.env.ACCOUNT_SID,
  });
  client.api.baseUrl = base;
  client.verify.baseUrl = `${base}/verify.twilio.com`;
  const results = {};
  try {
    const created = await client.messages.create({ to: "+15005550006", from: "+15005550006", body: "from a client" });
    results.message_created = true;
    results.account_sid = created.accountSid;
  } catch (e) {
    results.message_created = { status: e.status, code: e.code };
  }
  try {
    await client.verify.v2
      .services("VA0123456789abcdef0123456789abcdef")
      .verifications.create({ to: "+15005550006", channel: "sms" });
    results.verification = "allowed";
  } catch (e) {
    results.verification = { status: e.status, code: e.code };
  }
  console.log(JSON.stringify(results));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
