//! Paging links: Twilio's newer APIs answer list requests with absolute
//! `meta.next_page_url`, `previous_page_url`, `first_page_url` and `url` that SDKs follow
//! verbatim. They point at twilio.com, so paging would leave the sidecar; they are rewritten to
//! point back at it, in the form the request came in (README "Routing" and "Error codes").
//!
//! Only JSON bodies of a known size up to [`MAX_REWRITE_BODY`], only those four keys of the
//! top-level `meta` object, only links to allowed Twilio hosts. The rewrite splices the new
//! strings into the original bytes, so nothing else in the body changes (key order, spacing,
//! number formatting). Anything else streams through untouched.
//!
//! A page is held in memory from the moment it is read until the app has read it, so the
//! pages held at once are bounded by a [`RewriteBudget`] (`limits.max_rewrite_buffer`); an app
//! that stops reading is cut off by `limits.write_timeout`, which gives its page back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::HeaderValue;
use prometheus::IntGauge;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::gate::route::{Hosts, RouteSource};

/// Larger JSON bodies are not buffered for rewriting. A full page (1,000 records) of the
/// largest list in Twilio's OpenAPI specs, built from their examples, is 2.34 MiB
/// (`/v1/Tollfree/Verifications`); 99 % of lists are under 1.2 MiB
/// (`scripts/page-sizes.py`). SDKs ask for 50 records unless told otherwise.
pub const MAX_REWRITE_BODY: u64 = 3 * 1024 * 1024;

/// The bytes of pages held for rewriting, across every request and serving thread.
#[derive(Debug)]
pub struct RewriteBudget {
    limit: u64,
    held: AtomicU64,
    gauge: IntGauge,
}

impl RewriteBudget {
    pub fn new(limit: u64, gauge: IntGauge) -> Arc<RewriteBudget> {
        Arc::new(RewriteBudget {
            limit,
            held: AtomicU64::new(0),
            gauge,
        })
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Room for a page of `len` bytes, held until the returned reservation is dropped; `None`
    /// when that would go past the limit.
    pub fn reserve(self: &Arc<Self>, len: u64) -> Option<Reservation> {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(len).filter(|total| *total <= self.limit)
            })
            .ok()?;
        self.gauge.add(i64::try_from(len).unwrap_or(i64::MAX));
        Some(Reservation {
            budget: self.clone(),
            len,
        })
    }
}

/// Room for one page under the budget.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<RewriteBudget>,
    len: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.len, Ordering::AcqRel);
        self.budget
            .gauge
            .sub(i64::try_from(self.len).unwrap_or(i64::MAX));
    }
}

/// A page's bytes with the room they take: hyper drops the body once the app has read it
/// (or the connection is gone), and with it the reservation.
pub struct HeldPage {
    pub bytes: bytes::Bytes,
    pub reservation: Reservation,
}

impl AsRef<[u8]> for HeldPage {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// How links in a response should point back at the sidecar.
#[derive(Debug, Clone)]
pub enum LinkBase {
    /// The app addressed Twilio hosts directly (absolute-form target or a Twilio `Host`):
    /// links become `http://{twilio host}{path}`, which it sends through the sidecar again.
    TwilioHost,
    /// The app addressed the sidecar (`authority`): links become
    /// `http://{authority}/{twilio host}{path}`, or without the host segment when it is the
    /// default host and the app used no prefix.
    Sidecar {
        authority: String,
        default_host: Option<String>,
    },
}

impl LinkBase {
    /// The base for a request that came in by `source`, with the `Host` (or `:authority`) it
    /// carried. `None` when links cannot be pointed back (no usable authority).
    pub fn for_request(
        source: RouteSource,
        authority: Option<&HeaderValue>,
        default_host: &str,
    ) -> Option<LinkBase> {
        match source {
            RouteSource::AbsoluteForm | RouteSource::HostHeader => Some(LinkBase::TwilioHost),
            // The app's next request comes through the proxy again: Twilio's links are right.
            RouteSource::Tunnel => None,
            RouteSource::PathPrefix | RouteSource::Default => {
                let authority = authority?.to_str().ok()?;
                // It is echoed into a URL: accept only what an authority can hold.
                let sane = !authority.is_empty()
                    && authority.len() <= 255
                    && authority.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    });
                sane.then(|| LinkBase::Sidecar {
                    authority: authority.to_string(),
                    default_host: (source == RouteSource::Default)
                        .then(|| default_host.to_string()),
                })
            }
        }
    }

    /// The rewritten form of `link`, when it is an https link to an allowed Twilio host.
    fn rewrite(&self, link: &str, hosts: &Hosts) -> Option<String> {
        let rest = link.strip_prefix("https://")?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (host, path) = rest.split_at(end);
        let id = hosts.lookup(host)?;
        let host = hosts.name(id);
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Some(match self {
            LinkBase::TwilioHost => format!("http://{host}{path}"),
            LinkBase::Sidecar {
                authority,
                default_host,
            } => {
                if default_host.as_deref() == Some(host) {
                    format!("http://{authority}{path}")
                } else {
                    format!("http://{authority}/{host}{path}")
                }
            }
        })
    }
}

#[derive(Deserialize)]
struct Top<'a> {
    #[serde(borrow)]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    next_page_url: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_page_url: Option<&'a RawValue>,
    #[serde(borrow)]
    first_page_url: Option<&'a RawValue>,
    #[serde(borrow)]
    url: Option<&'a RawValue>,
}

/// The body with its paging links rewritten, or `None` when there is nothing to change (not
/// JSON, no `meta`, no Twilio links).
pub fn rewrite_links(body: &[u8], base: &LinkBase, hosts: &Hosts) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(body).ok()?;
    let top: Top<'_> = serde_json::from_str(text).ok()?;
    let meta: Meta<'_> = serde_json::from_str(top.meta?.get()).ok()?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for raw in [
        meta.next_page_url,
        meta.previous_page_url,
        meta.first_page_url,
        meta.url,
    ]
    .into_iter()
    .flatten()
    {
        let Ok(link) = serde_json::from_str::<String>(raw.get()) else {
            continue; // null or not a string
        };
        if let Some(new) = base.rewrite(&link, hosts) {
            // Every RawValue borrows from `text`, so its offset is where it sits in the body.
            let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
            let encoded = serde_json::to_string(&new).ok()?;
            edits.push((start, raw.get().len(), encoded));
        }
    }
    if edits.is_empty() {
        return None;
    }
    edits.sort_by_key(|(start, _, _)| *start);
    let mut out = Vec::with_capacity(body.len() + 64 * edits.len());
    let mut at = 0;
    for (start, len, new) in edits {
        out.extend_from_slice(&body[at..start]);
        out.extend_from_slice(new.as_bytes());
        at = start + len;
    }
    out.extend_from_slice(&body[at..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Hosts {
        Hosts::new(["api.twilio.com", "conversations.twilio.com"].into_iter()).unwrap()
    }

    const PAGE: &str = r#"{"conversations": [{"url": "https://conversations.twilio.com/v1/Conversations/CH1"}],
 "meta": {"page": 0, "page_size": 2, "first_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=2&Page=0",
  "previous_page_url": null, "url": "https://conversations.twilio.com/v1/Conversations?PageSize=2&Page=0",
  "next_page_url": "https://conversations.twilio.com/v1/Conversations?PageSize=2&Page=1&PageToken=PT1", "key": "conversations"}}"#;

    #[test]
    fn rewrites_only_meta_links_in_place() {
        let base = LinkBase::Sidecar {
            authority: "127.0.0.1:8080".into(),
            default_host: None,
        };
        let out =
            String::from_utf8(rewrite_links(PAGE.as_bytes(), &base, &hosts()).unwrap()).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["meta"]["next_page_url"], "http://127.0.0.1:8080/conversations.twilio.com/v1/Conversations?PageSize=2&Page=1&PageToken=PT1");
        assert_eq!(
            v["meta"]["first_page_url"],
            "http://127.0.0.1:8080/conversations.twilio.com/v1/Conversations?PageSize=2&Page=0"
        );
        assert_eq!(
            v["meta"]["url"],
            "http://127.0.0.1:8080/conversations.twilio.com/v1/Conversations?PageSize=2&Page=0"
        );
        assert!(v["meta"]["previous_page_url"].is_null());
        // Resource links are not paging links: untouched, and so is the layout.
        assert_eq!(
            v["conversations"][0]["url"],
            "https://conversations.twilio.com/v1/Conversations/CH1"
        );
        assert!(out.starts_with("{\"conversations\": [{\"url\": \"https://conversations"));
        assert!(out.contains("\"previous_page_url\": null, \"url\": \"http://127.0.0.1:8080/"));
    }

    #[test]
    fn the_form_follows_the_request() {
        let h = hosts();
        let link = "https://conversations.twilio.com/v1/Conversations?Page=1";
        assert_eq!(
            LinkBase::TwilioHost.rewrite(link, &h).unwrap(),
            "http://conversations.twilio.com/v1/Conversations?Page=1"
        );
        let default = LinkBase::for_request(
            RouteSource::Default,
            Some(&HeaderValue::from_static("sidecar:8080")),
            "conversations.twilio.com",
        )
        .unwrap();
        assert_eq!(
            default.rewrite(link, &h).unwrap(),
            "http://sidecar:8080/v1/Conversations?Page=1"
        );
        let prefix = LinkBase::for_request(
            RouteSource::PathPrefix,
            Some(&HeaderValue::from_static("sidecar:8080")),
            "api.twilio.com",
        )
        .unwrap();
        assert_eq!(
            prefix.rewrite(link, &h).unwrap(),
            "http://sidecar:8080/conversations.twilio.com/v1/Conversations?Page=1"
        );
        // Never a foreign host, never plain http, never a hostile authority.
        assert!(prefix.rewrite("https://evil.example/v1/x", &h).is_none());
        assert!(prefix
            .rewrite("http://conversations.twilio.com/v1/x", &h)
            .is_none());
        assert!(LinkBase::for_request(
            RouteSource::PathPrefix,
            Some(&HeaderValue::from_static("a\"b")),
            "api.twilio.com"
        )
        .is_none());
        assert!(LinkBase::for_request(RouteSource::PathPrefix, None, "api.twilio.com").is_none());
    }

    #[test]
    fn leaves_other_bodies_alone() {
        let base = LinkBase::TwilioHost;
        let h = hosts();
        for body in [
            "not json",
            r#"{"sid": "SM1", "url": "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/SM1.json"}"#,
            r#"{"meta": {"next_page_url": null}}"#,
            r#"{"meta": {"next_page_url": "https://evil.example/x"}}"#,
            r#"{"meta": "text"}"#,
        ] {
            assert!(
                rewrite_links(body.as_bytes(), &base, &h).is_none(),
                "{body}"
            );
        }
    }
}
