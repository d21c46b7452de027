//! Twilio's rate limits absorbed by the real binary, against a stand-in that answers 429 on
//! cue: retried until it succeeds with the same body every time, exhausted (the app gets
//! Twilio's 429 as sent), `Retry-After` honoured and capped by the request's deadline, a
//! streamed body never sent twice; `max_concurrent` keeping the upstream at or under the limit
//! with 200 requests in parallel, its queue bounded in length and time; SIGTERM during a
//! backoff draining cleanly.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use twilio_sidecar::dev::stand_in::{echo, Recorded, Reply};

const TWILIO_429: &str = r#"{"code": 20429, "message": "Too Many Requests", "more_info": "https://www.twilio.com/docs/errors/20429", "status": 429}"#;

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

fn too_many(retry_after: Option<&str>) -> Reply {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(s) = retry_after {
        headers.push(("retry-after".into(), s.into()));
    }
    Reply {
        status: StatusCode::TOO_MANY_REQUESTS,
        headers,
        body: Bytes::from_static(TWILIO_429.as_bytes()),
        delay: Duration::ZERO,
    }
}

async fn start(upstream: &str, account: &str, limits: &str) -> Harness {
    let (upstream, account, limits) = (
        upstream.to_string(),
        account.to_string(),
        limits.to_string(),
    );
    Harness::start_with(move |ctx| {
        let text = standard_config(ctx, &upstream, POLICY).replacen(
            "secret = { file = \"secret\" } }",
            &format!("secret = {{ file = \"secret\" }} }}\n{account}"),
            1,
        );
        format!("{text}\n[limits]\n{limits}\n")
    })
    .await
}

/// 429 for the first `n` requests, then `echo`.
fn first_n_429(n: usize, retry_after: Option<&'static str>) -> impl Fn(&Recorded) -> Reply {
    let seen = AtomicUsize::new(0);
    move |r| {
        if seen.fetch_add(1, Ordering::SeqCst) < n {
            too_many(retry_after)
        } else {
            echo(r)
        }
    }
}

fn metric(metrics: &str, line_start: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_429_is_retried_with_the_same_body_until_it_succeeds() {
    let h = start("", "", "").await;
    h.stand_in.set_responder(first_n_429(2, None));
    let body = b"To=%2B15558675310&Body=hello";
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Request-Id", "retry-1"),
    ];
    let resp = h.send("POST", &messages(), &headers, body).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = h.stand_in.requests();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.body.as_ref() == body && r.method == "POST"));
    assert!(seen
        .iter()
        .all(|r| r.header_values("authorization") == [expected_authorization()]));

    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!("twilio_sidecar_twilio_429_total{{account=\"{SID}\"}}")
        ),
        2
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("twilio_sidecar_retries_429_total{{account=\"{SID}\",outcome=\"retried\"}}")
        ),
        2
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("twilio_sidecar_retries_429_total{{account=\"{SID}\",outcome=\"succeeded\"}}")
        ),
        1
    );
    let logs = h.logs_after("retry-1").await;
    let line = logs.iter().find(|l| l.contains("retry-1")).unwrap();
    assert!(line.contains("\"retries_429\":2"), "{line}");
}

#[tokio::test]
async fn exhausted_retries_pass_twilios_429_on_unchanged() {
    let h = start("retry_429 = 2", "", "").await;
    h.stand_in.set_responder(|_: &Recorded| too_many(None));
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.text(), TWILIO_429);
    assert_eq!(h.stand_in.requests().len(), 3, "one try and two retries");
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!("twilio_sidecar_retries_429_total{{account=\"{SID}\",outcome=\"exhausted\"}}")
        ),
        1
    );

    // A body that was streamed cannot be sent twice: the 429 goes to the app at once.
    h.stand_in.clear();
    let big = vec![b'a'; 100 * 1024];
    let resp = h
        .send("POST", &messages(), &[("Content-Type", "text/plain")], &big)
        .await;
    assert_eq!(resp.status, 429);
    assert_eq!(h.stand_in.requests().len(), 1);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!(
                "twilio_sidecar_retries_429_total{{account=\"{SID}\",outcome=\"not_retryable\"}}"
            )
        ),
        1
    );
}

#[tokio::test]
async fn retry_after_is_honoured_and_capped_by_the_request_deadline() {
    let h = start("", "", "request_timeout = \"5s\"").await;
    h.stand_in.set_responder(first_n_429(1, Some("1")));
    let started = Instant::now();
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not waited"
    );

    // Retry-After beyond the request's deadline: not waited for, Twilio's 429 at once.
    h.stand_in
        .set_responder(|_: &Recorded| too_many(Some("30")));
    let resp = h.send("GET", &messages(), &[], b"").await;
    assert_eq!(resp.status, 429);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!("twilio_sidecar_retries_429_total{{account=\"{SID}\",outcome=\"deadline\"}}")
        ),
        1
    );
}

/// Arrival times at the stand-in, for the in-flight count over them.
fn arrivals(delay: Duration) -> (Arc<Mutex<Vec<Instant>>>, impl Fn(&Recorded) -> Reply) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = log.clone();
    (log, move |r: &Recorded| {
        sink.lock().unwrap().push(Instant::now());
        Reply { delay, ..echo(r) }
    })
}

/// The most requests that arrived within any window of `delay`: each is in flight for
/// `delay` after it arrives, so this is the upstream's peak concurrency.
fn peak(arrived: &[Instant], delay: Duration) -> usize {
    let mut t = arrived.to_vec();
    t.sort();
    (0..t.len())
        .map(|i| {
            t[i..]
                .iter()
                .take_while(|x| x.duration_since(t[i]) < delay)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_holds_the_upstream_at_its_limit_under_200_parallel_requests() {
    let h = Arc::new(
        start(
            "queue_timeout = \"30s\"",
            "max_concurrent = 3",
            "request_timeout = \"60s\"",
        )
        .await,
    );
    let delay = Duration::from_millis(25);
    let (log, responder) = arrivals(delay);
    h.stand_in.set_responder(responder);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let h = h.clone();
            tokio::spawn(async move { h.send("GET", &messages(), &[], b"").await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let arrived = log.lock().unwrap().clone();
    assert_eq!(arrived.len(), 200);
    let peak = peak(&arrived, delay);
    assert!(
        peak <= 3,
        "{peak} requests in flight at Twilio with max_concurrent = 3"
    );
    assert!(
        peak >= 2,
        "the limit was never reached ({peak}): the test proves nothing"
    );
    let metrics = h.metrics().await;
    assert!(
        metrics.contains(&format!(
            "twilio_sidecar_account_queue_wait_seconds_count{{account=\"{SID}\"}} 200"
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_is_bounded_in_length_and_in_time() {
    let h = Arc::new(
        start(
            "max_queued = 2\nqueue_timeout = \"300ms\"",
            "max_concurrent = 1",
            "",
        )
        .await,
    );
    let (_, responder) = arrivals(Duration::from_millis(1000));
    h.stand_in.set_responder(responder);
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let h = h.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30 * i)).await;
                h.send("GET", &messages(), &[], b"").await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        let resp = t.await.unwrap();
        if resp.status == 503 {
            assert_eq!(resp.twilio_error(503), 79430);
            assert_eq!(resp.header("retry-after"), Some("1"));
        }
        statuses.push(resp.status);
    }
    // One in flight; two queued then timed out; two refused at once as the queue was full.
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!(
                "twilio_sidecar_account_queue_refusals_total{{account=\"{SID}\",reason=\"full\"}}"
            )
        ),
        2
    );
    assert_eq!(metric(&metrics, &format!("twilio_sidecar_account_queue_refusals_total{{account=\"{SID}\",reason=\"timeout\"}}")), 2);
    assert_eq!(h.stand_in.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_backoff_drains_the_request() {
    let mut h = start("", "", "drain_timeout = \"10s\"").await;
    h.stand_in.set_responder(first_n_429(1, Some("1")));
    let proxy = h.proxy;
    let in_flight = tokio::spawn(async move {
        let raw = format!(
            "GET {} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            messages()
        );
        raw_request(proxy, raw.as_bytes()).await
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.stand_in.requests().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // It is now waiting out Retry-After.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(h.child.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let resp = in_flight.await.unwrap();
    assert_eq!(
        resp.status,
        200,
        "the retried request was cut short: {}",
        resp.text()
    );
    assert_eq!(h.stand_in.requests().len(), 2);
    let status = h.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}
