//! `twilio-sidecar dev`: the real proxy against a built-in stand-in for Twilio on loopback, with
//! a demo policy and fake credentials. Works offline; like `vault server -dev`, never for
//! production.

pub mod stand_in;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;

use crate::app::{Sidecar, StartError};
use crate::config::hosts::TWILIO_PRODUCT_HOSTS;
use crate::config::Config;
use crate::dev::stand_in::StandIn;

/// The fake account of the demo config.
pub const DEV_ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// The fake API key of the demo config.
pub const DEV_KEY_SID: &str = "SKfedcba9876543210fedcba9876543210";
const DEV_KEY_SECRET: &str = "dev-only-secret-not-a-real-credential";

/// The demo policy: messages sent and read, Verify verifications, Lookups; API keys never.
/// (The fuzz target decides requests under it too.)
pub const DEMO_POLICY: &str = r#"[policy]
allow = [
  "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
  "GET /2010-04-01/Accounts/{AccountSid}/Messages*",
  "POST verify.twilio.com /v2/Services/*/Verifications",
  "GET lookups.twilio.com /v2/PhoneNumbers/*",
]
deny = ["* /2010-04-01/Accounts/{AccountSid}/Keys*"]
"#;

/// The demo config: `connect_to` points at the stand-in.
pub fn dev_config_text(listen: SocketAddr, admin: SocketAddr, stand_in: SocketAddr) -> String {
    format!(
        r#"# twilio-sidecar dev: demo config (fake credentials, built-in stand-in for Twilio)
[listen]
address = "{listen}"

[admin]
address = "{admin}"

[upstream]
connect_to = "{stand_in}"

[[accounts]]
sid = "{DEV_ACCOUNT_SID}"
credential = {{ type = "api_key", key_sid = "{DEV_KEY_SID}", secret = "{DEV_KEY_SECRET}" }}

{DEMO_POLICY}"#
    )
}

/// Runs dev mode until `shutdown`; `ready` receives the text to show the user once serving.
pub async fn run(
    listen: SocketAddr,
    admin: SocketAddr,
    shutdown: impl Future<Output = ()>,
    ready: impl FnOnce(&str),
) -> Result<(), StartError> {
    let stand_in = StandIn::start(&TWILIO_PRODUCT_HOSTS).await.map_err(|e| {
        StartError::Config(crate::config::ConfigError::single(
            "<dev>",
            format!("cannot start the Twilio stand-in: {e}"),
        ))
    })?;
    let text = dev_config_text(listen, admin, stand_in.addr());
    // The demo's inline fake secret is deliberate, so its warning is dropped.
    let (config, _warnings) = Config::parse(&text, Path::new("."), "<dev>")?;
    let sidecar = Sidecar::start(config, Vec::new(), vec![stand_in.ca_der()])
        .await
        .map_err(|e| match e {
            // The addresses came from the command line, not from a config file.
            StartError::Bind { what, addr, source } => StartError::Bind {
                what: match what {
                    "listen.address" => "--listen",
                    "admin.address" => "--admin",
                    other => other,
                },
                addr,
                source,
            },
            other => other,
        })?;
    ready(&banner(
        sidecar.proxy_addr(),
        sidecar.admin_addr(),
        stand_in.addr(),
    ));
    sidecar.serve(shutdown).await;
    drop(stand_in);
    Ok(())
}

/// What `dev` prints: where things are and curl commands to paste.
pub fn banner(proxy: SocketAddr, admin: SocketAddr, stand_in: SocketAddr) -> String {
    let base = format!("http://{proxy}");
    format!(
        r#"twilio-sidecar dev: NOT FOR PRODUCTION. Fake credentials; a built-in stand-in for Twilio
answers on {stand_in} (throwaway CA, certificates for the Twilio host names).

  proxy  {base}
  admin  http://{admin}

An allowed call (200; the stand-in echoes the Authorization the sidecar attached, secret redacted):

  curl -s -X POST {base}/2010-04-01/Accounts/{DEV_ACCOUNT_SID}/Messages.json \
       -u app:ignored --data-urlencode To=+15005550006 --data-urlencode From=+15005550006 --data-urlencode Body=hello

A call the policy denies (403, Twilio error 70051):

  curl -s -X POST {base}/2010-04-01/Accounts/{DEV_ACCOUNT_SID}/Calls.json \
       --data-urlencode To=+15005550006 --data-urlencode From=+15005550006 --data-urlencode Url=http://demo.twilio.com/docs/voice.xml

Another product, through the host-prefix form an SDK base URL can use:

  curl -s -X POST {base}/verify.twilio.com/v2/Services/VA0123456789abcdef0123456789abcdef/Verifications \
       --data-urlencode To=+15005550006 --data-urlencode Channel=sms

Metrics and the effective config:

  curl -s http://{admin}/metrics | grep twilio_sidecar_requests_total
  curl -s http://{admin}/config

Ctrl-C stops it.
"#
    )
}
