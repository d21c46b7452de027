//! The pool's pure parts, without a network: stream slot accounting, the idle sweep's
//! decisions, the resend decision, host entries, and who opens an HTTP/2 connection while
//! others wait. (The exchanges themselves are tested against real TLS servers in
//! `tests/upstream_pool.rs`.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::uri::Authority;

use super::h2::{refused_unprocessed, Announce, StreamSlot};
use super::sweep::{h2_idle_expired, idle_expired};
use super::{entry_for, ConnectionPool, Pick};
use crate::config::UpstreamConfig;
use crate::metrics::UpstreamMetrics;
use crate::upstream::tls;

fn pool() -> Arc<ConnectionPool> {
    let settings = UpstreamConfig {
        default_host: "api.twilio.com".into(),
        allowed_hosts: vec!["api.twilio.com".into()],
        connect_to: None,
        ca_file: None,
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        pool_idle_timeout: Duration::from_secs(90),
        pool_max_idle_per_host: 4,
        http2_max_streams: 2,
        queue_timeout: Duration::from_secs(5),
        max_queued: 1000,
        retry_429: 3,
        forward_headers: Vec::new(),
    };
    let (connector, _) = tls::connector(&settings, &[]).unwrap();
    Arc::new(ConnectionPool::new(
        connector,
        settings.pool_idle_timeout,
        settings.pool_max_idle_per_host,
        settings.http2_max_streams,
        Arc::new(UpstreamMetrics::detached()),
    ))
}

#[test]
fn a_stream_slot_counts_until_it_is_dropped() {
    let open = Arc::new(AtomicUsize::new(0));
    let a = StreamSlot::take(&open);
    let b = StreamSlot::take(&open);
    assert_eq!(open.load(Ordering::Relaxed), 2);
    drop(a);
    assert_eq!(open.load(Ordering::Relaxed), 1);
    drop(b);
    assert_eq!(open.load(Ordering::Relaxed), 0);
}

#[test]
fn idle_connections_expire_at_the_timeout_and_busy_http2_ones_never() {
    let t0 = Instant::now();
    let timeout = Duration::from_secs(90);
    assert!(!idle_expired(t0, t0 + Duration::from_secs(89), timeout));
    assert!(idle_expired(t0, t0 + timeout, timeout));
    assert!(!h2_idle_expired(
        0,
        t0,
        t0 + Duration::from_secs(10),
        timeout
    ));
    assert!(h2_idle_expired(0, t0, t0 + timeout, timeout));
    // A stream still open keeps it, however long ago the last one started.
    assert!(!h2_idle_expired(1, t0, t0 + 10 * timeout, timeout));
}

#[test]
fn only_unprocessed_refusals_are_sent_again() {
    use h2::Reason;
    // RST_STREAM(REFUSED_STREAM), from the server or seen locally.
    assert!(refused_unprocessed(
        Some(Reason::REFUSED_STREAM),
        false,
        true
    ));
    // A graceful GOAWAY from Twilio retiring the connection.
    assert!(refused_unprocessed(Some(Reason::NO_ERROR), true, true));
    // A GOAWAY we sent ourselves, or one carrying an error: the stream may have been processed.
    assert!(!refused_unprocessed(Some(Reason::NO_ERROR), true, false));
    assert!(!refused_unprocessed(
        Some(Reason::INTERNAL_ERROR),
        true,
        true
    ));
    assert!(!refused_unprocessed(
        Some(Reason::PROTOCOL_ERROR),
        true,
        true
    ));
    // A stream reset for any other reason, or no reason at all.
    assert!(!refused_unprocessed(Some(Reason::CANCEL), false, true));
    assert!(!refused_unprocessed(Some(Reason::NO_ERROR), false, true));
    assert!(!refused_unprocessed(None, false, false));
}

#[test]
fn host_entries_are_made_once_and_matched_byte_for_byte() {
    let mut hosts = Vec::new();
    let api = Authority::from_static("api.twilio.com");
    let verify = Authority::from_static("verify.twilio.com");
    entry_for(&mut hosts, &api).unwrap();
    entry_for(&mut hosts, &verify).unwrap();
    let again = entry_for(&mut hosts, &api).unwrap();
    assert_eq!(again.authority.as_str(), "api.twilio.com");
    assert_eq!(again.host_header, "api.twilio.com");
    assert_eq!(hosts.len(), 2);
}

#[tokio::test]
async fn one_request_opens_an_http2_connection_while_the_others_wait() {
    let pool = pool();
    let api = Authority::from_static("api.twilio.com");
    let (announce, mut waiting) = {
        let mut hosts = pool.lock();
        let entry = entry_for(&mut hosts, &api).unwrap();
        // A host not yet known to speak HTTP/2: every request opens its own connection.
        assert!(matches!(pool.pick(entry), Pick::Connect(None, "no_idle")));
        assert!(matches!(pool.pick(entry), Pick::Connect(None, "no_idle")));
        // Known to speak HTTP/2, no connection with room: the first opens one and is
        // announced, the next waits for it.
        entry.speaks_h2 = true;
        let Pick::Connect(Some(announce), "h2_streams_busy") = pool.pick(entry) else {
            panic!("the first request should open the connection");
        };
        let Pick::Wait(waiting) = pool.pick(entry) else {
            panic!("the second request should wait for it");
        };
        (announce, waiting)
    };

    // The opener gives up mid-handshake (its request timed out): the mark is cleared, so the
    // waiter is woken and looks again instead of waiting on nothing.
    drop(Announce {
        pool: &pool,
        authority: &api,
        sender: Some(announce),
    });
    assert!(waiting.wait_for(Option::is_some).await.is_err());
    let mut hosts = pool.lock();
    let entry = entry_for(&mut hosts, &api).unwrap();
    assert!(entry.h2_connecting.is_none());
    assert!(matches!(
        pool.pick(entry),
        Pick::Connect(Some(_), "h2_streams_busy")
    ));
}

#[tokio::test]
async fn a_failed_handshake_is_announced_to_the_waiters() {
    let pool = pool();
    let api = Authority::from_static("api.twilio.com");
    let mut waiting = {
        let mut hosts = pool.lock();
        let entry = entry_for(&mut hosts, &api).unwrap();
        entry.speaks_h2 = true;
        let Pick::Connect(Some(announce), "h2_streams_busy") = pool.pick(entry) else {
            panic!("the first request should open the connection");
        };
        let Pick::Wait(waiting) = pool.pick(entry) else {
            panic!("the second request should wait for it");
        };
        let mut opener = Announce {
            pool: &pool,
            authority: &api,
            sender: Some(announce),
        };
        opener.finish(entry, Err(crate::upstream::UpstreamFailure::Tls));
        waiting
    };
    let outcome = *waiting.wait_for(Option::is_some).await.unwrap();
    assert_eq!(outcome, Some(Err(crate::upstream::UpstreamFailure::Tls)));
}
