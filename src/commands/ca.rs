//! `twilio-sidecar ca init`: the local CA for transparent mode (see [`crate::intercept::ca`]),
//! and what to do with it next.

use std::path::Path;

use crate::intercept::ca;

/// Writes the CA and says how apps come to trust it.
pub fn ca_init(dir: &Path, days: u32) -> (String, i32) {
    match ca::init(dir, days) {
        Ok(files) => (
            format!(
                "wrote {cert} (the CA certificate: give it to the apps) and {key} (its key, 0600: \
                 give it only to the sidecar)\n\
                 It can certify only names under twilio.com (a critical name constraint), for {days} days.\n\
                 \n\
                 [intercept]\n\
                 ca_cert = \"{cert}\"\n\
                 ca_key = {{ file = \"{key}\" }}\n\
                 \n\
                 Apps then need two environment variables (README \"Transparent mode\"), e.g. Python:\n\
                 HTTPS_PROXY=http://127.0.0.1:8080 REQUESTS_CA_BUNDLE={cert}\n",
                cert = files.cert.display(),
                key = files.key.display(),
            ),
            0,
        ),
        Err(e) => (format!("twilio-sidecar ca init: {e}\n"), 1),
    }
}
