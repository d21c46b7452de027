//! Soak under faults: the real binary under steady load for `SOAK_SECONDS` (default 60)
//! against a fault-injecting TLS stand-in for Twilio, while, concurrently and repeatedly:
//!
//! - the API key's Secret is swapped Kubernetes-style every 2 s, with chatty unrelated files
//!   written in every watched directory;
//! - the OAuth token endpoint flaps (500s, malformed JSON, answers slower than
//!   `oauth.token_timeout`), and issued tokens are revoked so Twilio 401s them;
//! - upstream faults: connections closed before the response head, heads slower than
//!   `upstream.request_timeout`, half-open connections that never answer, bodies cut off
//!   mid-way, TLS handshakes that fail, HTTP/2 streams refused and connections retired with a
//!   graceful GOAWAY;
//! - SIGHUP and `POST /reload` storms, and broken configs written then repaired.
//!
//! Asserted: every response Twilio's stand-in finished reaches the app byte for byte; every
//! request it failed before answering gets a Twilio-shaped 502/504 (a body cut off after the
//! head reaches the app cut off, which its HTTP framing shows); nothing hangs; no request
//! carries a mixed pair, or a pair older than 1 s after its swap; no panic and no error-level
//! log line but the injected broken configs'; RSS and open files flat (< 10 % growth from
//! the first third of the run to the end); the in-flight gauge back at 0. A summary table is
//! printed. `#[ignore]`d in a plain `cargo test`: `scripts/test-all.sh` runs the short profile,
//! and the long one is
//!
//!     SOAK_SECONDS=1800 cargo test --release --test soak -- --ignored --nocapture
//!
//! whose table is in benches/SOAK.md.

mod common;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use twilio_sidecar::dev::stand_in::ThrowawayPki;

const OAUTH_SID: &str = "AC0000000000000000000000000000000a";
/// Every how many new connections a TLS handshake fails.
const TLS_FAIL_EVERY: u64 = 40;
/// Every how many HTTP/2 streams one is refused, and every how many HTTP/2 connections one is
/// retired with a graceful GOAWAY after its third stream.
const REFUSE_EVERY: u64 = 7;
const GOAWAY_EVERY: u64 = 5;

fn key_sid(n: u64) -> String {
    format!("SK{n:032x}")
}

fn secret(n: u64) -> String {
    format!("soak-secret-generation-{n}")
}

/// A Kubernetes-style Secret swap (see tests/reload.rs).
fn k8s_swap(dir: &Path, n: u64) {
    let stamp = format!("..soak_{n:06}");
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    std::fs::write(dir.join(&stamp).join("key_sid"), key_sid(n)).unwrap();
    std::fs::write(dir.join(&stamp).join("secret"), secret(n)).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    let _ = std::fs::remove_file(dir.join("..data_tmp"));
    symlink(&stamp, dir.join("..data_tmp")).unwrap();
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    for name in ["key_sid", "secret"] {
        if !dir.join(name).exists() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting stand-in for Twilio.

/// What the stand-in saw and did.
#[derive(Default)]
struct Seen {
    /// Request id → the body of a response sent in full.
    answered: HashMap<String, Bytes>,
    /// Every request id that arrived, answered or not.
    received: std::collections::HashSet<String>,
    /// Request ids answered 401 (a revoked bearer token): the sidecar replays these.
    rejected: std::collections::HashSet<String>,
    /// API-key requests: when they arrived and which generation their pair was from.
    pairs: Vec<(Instant, u64)>,
    mixed: u64,
    unknown_credentials: u64,
    connections: u64,
    tls_failed: u64,
    refused_streams: u64,
    goaways: u64,
    token_answers: HashMap<&'static str, u64>,
    revoked_401s: u64,
}

struct Twilio {
    addr: SocketAddr,
    ca_pem: String,
    seen: Arc<Mutex<Seen>>,
    tokens: Arc<Mutex<Tokens>>,
}

#[derive(Default)]
struct Tokens {
    next: u64,
    valid: Vec<String>,
    revoked: Vec<String>,
}

impl Twilio {
    async fn start(started: Instant) -> Twilio {
        let pki = ThrowawayPki::new(&["api.twilio.com", "verify.twilio.com", "oauth.twilio.com"])
            .unwrap();
        let h1 = tls_server_config(&pki, &[b"http/1.1"]);
        let h2 = tls_server_config(&pki, &[b"h2"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let twilio = Twilio {
            addr: listener.local_addr().unwrap(),
            ca_pem: pki.ca_pem.clone(),
            seen: Arc::default(),
            tokens: Arc::default(),
        };
        let (seen, tokens) = (twilio.seen.clone(), twilio.tokens.clone());
        tokio::spawn(async move {
            let h2_connections = Arc::new(AtomicU64::new(0));
            let streams = Arc::new(AtomicU64::new(0));
            while let Ok((mut tcp, _)) = listener.accept().await {
                let n = {
                    let mut s = seen.lock().unwrap();
                    s.connections += 1;
                    s.connections
                };
                if n % TLS_FAIL_EVERY == 0 {
                    // Not TLS at all: the handshake fails on the sidecar's side.
                    seen.lock().unwrap().tls_failed += 1;
                    let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                    continue;
                }
                let (h1, h2) = (h1.clone(), h2.clone());
                let (seen, tokens) = (seen.clone(), tokens.clone());
                let (h2_connections, streams) = (h2_connections.clone(), streams.clone());
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    );
                    let Ok(start) = acceptor.await else { return };
                    let sni = start.client_hello().server_name().map(str::to_string);
                    if sni.as_deref() == Some("verify.twilio.com") {
                        let Ok(tls) = start.into_stream(h2).await else {
                            return;
                        };
                        let c = h2_connections.fetch_add(1, Ordering::SeqCst) + 1;
                        serve_h2(tls, c % GOAWAY_EVERY == 0, &streams, &seen).await;
                    } else {
                        let Ok(tls) = start.into_stream(h1).await else {
                            return;
                        };
                        let service = service_fn(move |req| {
                            serve_h1(req, seen.clone(), tokens.clone(), started)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), service)
                            .await;
                    }
                });
            }
        });
        twilio
    }
}

/// The credential check every API request gets: an API-key pair of one generation, or a
/// bearer token that is valid. `Err` is the 401 Twilio would answer.
fn authorize(auth: &str, seen: &Mutex<Seen>, tokens: &Mutex<Tokens>) -> Result<(), ()> {
    if let Some(token) = auth.strip_prefix("Bearer ") {
        let t = tokens.lock().unwrap();
        if t.valid.iter().any(|v| v == token) && !t.revoked.iter().any(|v| v == token) {
            return Ok(());
        }
        drop(t);
        seen.lock().unwrap().revoked_401s += 1;
        return Err(());
    }
    let decoded = auth
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default();
    let (user, pass) = decoded.split_once(':').unwrap_or(("", ""));
    let user_gen = user
        .strip_prefix("SK")
        .and_then(|h| u64::from_str_radix(h, 16).ok());
    let pass_gen = pass
        .strip_prefix("soak-secret-generation-")
        .and_then(|n| n.parse::<u64>().ok());
    let mut s = seen.lock().unwrap();
    match (user_gen, pass_gen) {
        (Some(a), Some(b)) if a == b => {
            s.pairs.push((Instant::now(), a));
            Ok(())
        }
        (Some(_), Some(_)) => {
            s.mixed += 1;
            Err(())
        }
        _ => {
            s.unknown_credentials += 1;
            Err(())
        }
    }
}

fn twilio_error(status: u16, code: u32, message: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"code": {code}, "message": "{message}", "more_info": "https://www.twilio.com/docs/errors/{code}", "status": {status}}}"#
    ))
}

/// A response body that sends 100 bytes of the 10,000 its head announced, waits (so the head
/// and those bytes are on the wire), then breaks.
struct CutOff {
    sent: bool,
    pause: Pin<Box<tokio::time::Sleep>>,
}

impl CutOff {
    fn new() -> CutOff {
        CutOff {
            sent: false,
            pause: Box::pin(tokio::time::sleep(Duration::from_millis(50))),
        }
    }
}

impl Body for CutOff {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if !self.sent {
            self.sent = true;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; 100])))));
        }
        match self.pause.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::other("cut off")))),
            Poll::Pending => Poll::Pending,
        }
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(10_000)
    }
}

type H1Body = Either<Full<Bytes>, CutOff>;

fn respond(status: u16, body: Bytes) -> Response<H1Body> {
    let mut r = Response::new(Either::Left(Full::new(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

async fn serve_h1(
    req: Request<Incoming>,
    seen: Arc<Mutex<Seen>>,
    tokens: Arc<Mutex<Tokens>>,
    started: Instant,
) -> Result<Response<H1Body>, std::io::Error> {
    let host = req
        .headers()
        .get("host")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let chaos = req
        .headers()
        .get("x-chaos")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?;
    if !id.is_empty() {
        seen.lock().unwrap().received.insert(id.clone());
    }
    if host.starts_with("oauth.twilio.com") {
        return Ok(token_endpoint(&seen, &tokens, started).await);
    }
    match chaos.as_str() {
        // Closed without a response: hyper drops the connection when the service fails.
        "close" => return Err(std::io::Error::other("injected: closed before the head")),
        "slow" => tokio::time::sleep(Duration::from_secs(2)).await,
        "hang" => std::future::pending::<()>().await,
        "cut" => {
            let mut r = Response::new(Either::Right(CutOff::new()));
            r.headers_mut().insert(
                http::header::CONTENT_LENGTH,
                http::HeaderValue::from_static("10000"),
            );
            return Ok(r);
        }
        _ => {}
    }
    if authorize(&auth, &seen, &tokens).is_err() {
        seen.lock().unwrap().rejected.insert(id);
        return Ok(respond(401, twilio_error(401, 20003, "Authenticate")));
    }
    let status = if chaos == "error500" { 500 } else { 200 };
    let reply = if status == 500 {
        twilio_error(500, 20500, "Internal Server Error")
    } else {
        // A body the app can recognise byte for byte: the request id, and a length that varies.
        let pad = "p".repeat(id.len() * 13 % 700);
        Bytes::from(format!(
            r#"{{"sid": "SM{id}", "status": "queued", "body": "{}", "pad": "{pad}"}}"#,
            body.to_bytes().len()
        ))
    };
    seen.lock().unwrap().answered.insert(id, reply.clone());
    Ok(respond(status, reply))
}

/// oauth.twilio.com/v2/token, flapping every 3 s through: good tokens, 500s, malformed JSON,
/// answers slower than the sidecar's token_timeout, good tokens.
async fn token_endpoint(
    seen: &Mutex<Seen>,
    tokens: &Mutex<Tokens>,
    started: Instant,
) -> Response<H1Body> {
    let mode = match (started.elapsed().as_secs() / 3) % 5 {
        0 | 4 => "ok",
        1 => "http_500",
        2 => "malformed",
        _ => "slow",
    };
    *seen.lock().unwrap().token_answers.entry(mode).or_default() += 1;
    match mode {
        "http_500" => respond(500, Bytes::from_static(b"{\"error\": \"server_error\"}")),
        "malformed" => respond(200, Bytes::from_static(b"{\"access_token\": ")),
        "slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            respond(500, Bytes::from_static(b"{}"))
        }
        _ => {
            let token = {
                let mut t = tokens.lock().unwrap();
                t.next += 1;
                let token = format!("soak-token-{}", t.next);
                t.valid.push(token.clone());
                token
            };
            respond(
                200,
                Bytes::from(format!(
                    r#"{{"access_token": "{token}", "token_type": "Bearer", "expires_in": 12}}"#
                )),
            )
        }
    }
}

async fn serve_h2(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    retire: bool,
    streams: &AtomicU64,
    seen: &Arc<Mutex<Seen>>,
) {
    let Ok(mut conn) = h2::server::handshake(tls).await else {
        return;
    };
    let mut on_this = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        on_this += 1;
        if streams.fetch_add(1, Ordering::SeqCst) % REFUSE_EVERY == REFUSE_EVERY - 1 {
            seen.lock().unwrap().refused_streams += 1;
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        if retire && on_this == 3 {
            seen.lock().unwrap().goaways += 1;
            conn.graceful_shutdown();
        }
        let seen = seen.clone();
        tokio::spawn(async move {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().received.insert(id.clone());
            let mut body = req.into_body();
            let mut len = 0;
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                len += chunk.len();
            }
            let tokens = Mutex::new(Tokens::default());
            let (status, reply) = if authorize(&auth, &seen, &tokens).is_ok() {
                let reply = Bytes::from(format!(
                    r#"{{"sid": "VE{id}", "status": "pending", "body": "{len}"}}"#
                ));
                seen.lock().unwrap().answered.insert(id, reply.clone());
                (200, reply)
            } else {
                (401, twilio_error(401, 20003, "Authenticate"))
            };
            let head = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(())
                .unwrap();
            if let Ok(mut send) = respond.send_response(head, false) {
                let _ = send.send_data(reply, true);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The apps: steady load through the sidecar, every outcome recorded.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Api,
    Verify,
    OAuth,
    Chaos(&'static str),
}

#[derive(Debug)]
enum Outcome {
    /// Status and the whole body.
    Answer(u16, Bytes),
    /// The body broke off after the head (only a cut-off upstream body may do this).
    CutOff(u16),
    /// No response at all within 15 s, or the connection failed.
    Broken(String),
}

type AppClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn one_request(client: &AppClient, proxy: SocketAddr, kind: Kind, id: &str) -> Outcome {
    let (method, uri, body) = match kind {
        Kind::Api | Kind::Chaos(_) => (
            "POST",
            format!("http://{proxy}/2010-04-01/Accounts/{SID}/Messages.json"),
            "To=%2B15005550006&From=%2B15005550006&Body=soak",
        ),
        Kind::OAuth => (
            "GET",
            format!("http://{proxy}/2010-04-01/Accounts/{OAUTH_SID}/Messages.json"),
            "",
        ),
        Kind::Verify => (
            "POST",
            format!("http://{proxy}/verify.twilio.com/v2/Services/VA1/Verifications"),
            "To=%2B15005550006&Channel=sms",
        ),
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-request-id", id)
        .header("content-type", "application/x-www-form-urlencoded")
        // What the official SDKs send: credentials the sidecar strips.
        .header("authorization", basic("ACapp", "dummy"));
    if let Kind::Chaos(c) = kind {
        req = req.header("x-chaos", c);
    }
    let req = req
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let fut = async {
        let resp = match client.request(req).await {
            Ok(r) => r,
            Err(e) => return Outcome::Broken(format!("request: {e}")),
        };
        let status = resp.status().as_u16();
        match resp.into_body().collect().await {
            Ok(b) => Outcome::Answer(status, b.to_bytes()),
            Err(_) => Outcome::CutOff(status),
        }
    };
    match tokio::time::timeout(Duration::from_secs(15), fut).await {
        Ok(o) => o,
        Err(_) => Outcome::Broken("no answer within 15 s".into()),
    }
}

fn pick(n: u64) -> Kind {
    // A fixed mix: mostly ordinary sends, a steady trickle of every fault.
    match n % 40 {
        0 => Kind::Chaos("close"),
        1 => Kind::Chaos("slow"),
        2 => Kind::Chaos("hang"),
        3 => Kind::Chaos("cut"),
        4 => Kind::Chaos("error500"),
        5..=11 => Kind::Verify,
        12..=17 => Kind::OAuth,
        _ => Kind::Api,
    }
}

// ---------------------------------------------------------------------------------------------
// The process, watched.

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes long: scripts/test-all.sh runs the short profile (SOAK_SECONDS)"]
async fn soak_under_faults_loses_nothing() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let started = Instant::now();
    let twilio = Twilio::start(started).await;
    let up = twilio.addr;
    let ca = twilio.ca_pem.clone();
    let config_text = Arc::new(Mutex::new(String::new()));
    let text_slot = config_text.clone();
    let h = Arc::new(
        Harness::start_against(stand_in().await, move |ctx| {
            write(&ctx.dir, "chaos-ca.pem", &ca);
            let secrets = ctx.dir.join("secrets");
            std::fs::create_dir(&secrets).unwrap();
            k8s_swap(&secrets, 0);
            let text = format!(
                r#"
[listen]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[upstream]
connect_to = "{up}"
ca_file = "chaos-ca.pem"
allowed_hosts = ["api.twilio.com", "verify.twilio.com"]
# The fault the stand-in should inject rides on this header.
forward_headers = ["x-chaos"]
connect_timeout = "1s"
request_timeout = "1s"
[reload]
debounce = "250ms"
[oauth]
token_timeout = "1s"
wait_for_token = "2s"
expiry_margin = "3s"
backoff_base = "100ms"
backoff_max = "1s"
[limits]
request_timeout = "5s"
[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "secrets/key_sid" }}, secret = {{ file = "secrets/secret" }} }}
[[accounts]]
sid = "{OAUTH_SID}"
credential = {{ type = "oauth2", client_id = "OQ00000000000000000000000000000001", client_secret = {{ file = "oauth-secret" }} }}
[policy]
allow = [
  "/2010-04-01/Accounts/{{AccountSid}}/*",
  "POST verify.twilio.com /v2/Services/*/Verifications",
]
"#
            );
            write(&ctx.dir, "oauth-secret", "soak-client-secret");
            *text_slot.lock().unwrap() = text.clone();
            text
        })
        .await,
    );
    let pid = h.child.id();
    let dir = h.dir.path().to_path_buf();
    let secrets = dir.join("secrets");
    let good_config = config_text.lock().unwrap().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = started + Duration::from_secs(seconds);

    // Chatter: a file appended every 20 ms in every watched directory.
    let chatter = {
        let (stop, dirs) = (stop.clone(), vec![dir.clone(), secrets.clone()]);
        std::thread::spawn(move || {
            use std::io::Write;
            let mut files: Vec<_> = dirs
                .iter()
                .map(|d| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(d.join("app.log"))
                        .unwrap()
                })
                .collect();
            while !stop.load(Ordering::SeqCst) {
                for f in &mut files {
                    let _ = writeln!(f, "unrelated");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Rotation every 2 s; every fourth cycle a broken config in the middle, repaired before
    // the next swap. Swap times are kept for the staleness check.
    let swaps: Arc<Mutex<Vec<(u64, Instant)>>> = Arc::new(Mutex::new(vec![(0, started)]));
    let broken_configs = Arc::new(AtomicU64::new(0));
    let rotator = {
        let (stop, swaps, broken, config) = (
            stop.clone(),
            swaps.clone(),
            broken_configs.clone(),
            dir.join("sidecar.toml"),
        );
        let secrets = secrets.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                k8s_swap(&secrets, n);
                swaps.lock().unwrap().push((n, Instant::now()));
                tokio::time::sleep(Duration::from_millis(800)).await;
                if n % 4 == 0 {
                    std::fs::write(&config, "[policy\nallow = ").unwrap();
                    broken.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    std::fs::write(&config, &good_config).unwrap();
                    tokio::time::sleep(Duration::from_millis(800)).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(1200)).await;
                }
            }
        })
    };

    // Reload storms: every 3 s, five SIGHUPs and five POST /reload, back to back.
    let storms = {
        let (stop, admin) = (stop.clone(), h.admin);
        tokio::spawn(async move {
            let mut storms = 0u64;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(3000)).await;
                for _ in 0..5 {
                    let _ = rustix::process::kill_process(
                        rustix::process::Pid::from_raw(pid as i32).unwrap(),
                        rustix::process::Signal::HUP,
                    );
                    let _ = post_reload(admin).await;
                }
                storms += 1;
            }
            storms
        })
    };

    // Twilio revokes the newest token every 5 s.
    let revoker = {
        let (stop, tokens) = (stop.clone(), twilio.tokens.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_secs(5)).await;
                let mut t = tokens.lock().unwrap();
                if let Some(newest) = t.valid.last().cloned() {
                    t.revoked.push(newest);
                }
            }
        })
    };

    // The process, sampled every second.
    let samples: Arc<Mutex<Vec<(Duration, u64, u64)>>> = Arc::default();
    let sampler = {
        let (stop, samples) = (stop.clone(), samples.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                samples
                    .lock()
                    .unwrap()
                    .push((started.elapsed(), rss_kib(pid), open_fds(pid)));
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };

    // The apps: eight clients with keep-alive, as an SDK's session would.
    let client: AppClient = Client::builder(TokioExecutor::new()).build_http();
    let next = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<Vec<(String, Kind, Outcome)>>> = Arc::default();
    let apps: Vec<_> = (0..8)
        .map(|_| {
            let (client, next, outcomes, proxy) =
                (client.clone(), next.clone(), outcomes.clone(), h.proxy);
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let kind = pick(n);
                    let id = format!("soak{n:08}");
                    let outcome = one_request(&client, proxy, kind, &id).await;
                    outcomes.lock().unwrap().push((id, kind, outcome));
                }
            })
        })
        .collect();
    for app in apps {
        app.await.unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    rotator.await.unwrap();
    let storms = storms.await.unwrap();
    revoker.await.unwrap();
    sampler.await.unwrap();
    chatter.join().unwrap();
    // Hung requests are over once the sidecar's own limits are: then nothing is in flight.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let metrics = h.metrics().await;

    // ------------------------------------------------------------------ the verdict
    let outcomes = outcomes.lock().unwrap();
    let seen = std::mem::take(&mut *twilio.seen.lock().unwrap());
    let mut counts: HashMap<(Kind, String), u64> = HashMap::new();
    let mut violations = Vec::new();
    for (id, kind, outcome) in outcomes.iter() {
        let label = match outcome {
            Outcome::Answer(status, body) => {
                let code = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v["code"].as_u64());
                // Twilio answered in full: the app got exactly those bytes.
                if let Some(sent) = seen.answered.get(id) {
                    if sent != body {
                        violations.push(format!("{id} {kind:?}: body changed on the way"));
                    }
                }
                let arrived = seen.received.contains(id);
                match (kind, *status, code) {
                    // It never reached Twilio: a TLS handshake the stand-in failed on purpose.
                    (_, 502, Some(79502)) if !arrived => "502 79502 (TLS failure)".to_string(),
                    // Twilio 401'd its revoked token, and the replay with a new one met a TLS
                    // handshake the stand-in failed on purpose.
                    (Kind::OAuth, 502, Some(79502)) if seen.rejected.contains(id) => {
                        "502 79502 (replay after a 401, TLS failure)".to_string()
                    }
                    (Kind::Chaos("error500"), 500, Some(20500)) => "Twilio's 500".to_string(),
                    (Kind::Chaos("close"), 502, Some(79502)) => "502 79502".to_string(),
                    (Kind::Chaos("slow" | "hang"), 504, Some(79504)) => "504 79504".to_string(),
                    (Kind::Chaos(_), ..) => {
                        violations.push(format!("{id} {kind:?}: {status} {code:?}"));
                        format!("{status} {code:?} (unexpected)")
                    }
                    (_, 200, _) if seen.answered.contains_key(id) => "200".to_string(),
                    // OAuth: Twilio's 401 when the replay's token was revoked too, or the
                    // sidecar's 503 when the token endpoint is down and no token is usable.
                    (Kind::OAuth, 401, Some(20003)) => "Twilio's 401".to_string(),
                    (Kind::OAuth, 503, Some(79503)) => "503 79503".to_string(),
                    _ => {
                        violations.push(format!("{id} {kind:?}: {status} {code:?}"));
                        format!("{status} {code:?} (unexpected)")
                    }
                }
            }
            Outcome::CutOff(status) => {
                if *kind != Kind::Chaos("cut") {
                    violations.push(format!("{id} {kind:?}: body cut off ({status})"));
                }
                format!("{status}, body cut off")
            }
            Outcome::Broken(why) => {
                violations.push(format!("{id} {kind:?}: {why}"));
                format!("broken: {why}")
            }
        };
        *counts.entry((*kind, label)).or_default() += 1;
    }

    // Credentials: never a mixed pair; never one older than 1 s after the swap that replaced it.
    let swaps = swaps.lock().unwrap().clone();
    let mut stale = 0;
    for (at, generation) in &seen.pairs {
        let replaced = swaps
            .iter()
            .filter(|(n, when)| n > generation && *when + Duration::from_secs(1) < *at)
            .count();
        if replaced > 0 {
            stale += 1;
        }
    }

    // Logs: no panic; error level only for the injected broken configs.
    let logs = h.logs();
    let mut bad_logs: Vec<&String> = logs
        .iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            l.contains("panicked")
                || (v["level"] == "ERROR"
                    && v["message"] != "config reload failed; still serving the previous config")
        })
        .collect();
    bad_logs.truncate(10);

    // Resources: the median over the second sixth of the run against the median over the
    // last sixth (medians: connections come and go with the faults, a leak only grows).
    let samples = samples.lock().unwrap().clone();
    let window = |from: f64, to: f64| -> (u64, u64) {
        let (a, b) = (
            Duration::from_secs_f64(seconds as f64 * from),
            Duration::from_secs_f64(seconds as f64 * to),
        );
        let mut rss: Vec<u64> = Vec::new();
        let mut fds: Vec<u64> = Vec::new();
        for (_, r, f) in samples.iter().filter(|(t, _, _)| *t >= a && *t <= b) {
            rss.push(*r);
            fds.push(*f);
        }
        rss.sort_unstable();
        fds.sort_unstable();
        (rss[rss.len() / 2], fds[fds.len() / 2])
    };
    let early = window(1.0 / 6.0, 2.0 / 6.0);
    let late = window(5.0 / 6.0, 1.0);
    let rss_growth = late.0 as f64 / early.0 as f64 - 1.0;
    // The whole curve, a tenth of the run apart, to tell a plateau from a leak.
    let curve: Vec<String> = (0..=10)
        .filter_map(|i| samples.get(i * (samples.len() - 1) / 10))
        .map(|(t, r, f)| format!("{}s {} KiB {} fds", t.as_secs(), r, f))
        .collect();
    eprintln!("RSS and fds over the run: {}", curve.join(", "));
    let fd_growth = late.1 as f64 / early.1 as f64 - 1.0;
    let in_flight = metric(&metrics, "twilio_sidecar_in_flight_requests");

    // The table.
    eprintln!(
        "\nsoak: {seconds} s, {} requests through the sidecar",
        outcomes.len()
    );
    let mut rows: Vec<_> = counts.iter().collect();
    rows.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
    eprintln!("| request | outcome | count |\n|---|---|---|");
    for ((kind, label), n) in rows {
        eprintln!("| {kind:?} | {label} | {n} |");
    }
    let swaps_done = swaps.len() - 1;
    eprintln!(
        "\n| fault or check | count |\n|---|---|\n\
         | Secret swaps (Kubernetes-style) | {swaps_done} |\n\
         | broken configs written, then repaired | {} |\n\
         | reload storms (5 SIGHUP + 5 POST /reload) | {storms} |\n\
         | upstream connections / TLS handshakes failed | {} / {} |\n\
         | HTTP/2 streams refused / GOAWAYs | {} / {} |\n\
         | token endpoint answers | {:?} |\n\
         | Twilio 401s to revoked tokens | {} |\n\
         | requests with a mixed pair / unknown credential / a stale pair | {} / {} / {stale} |\n\
         | RSS KiB, median over the 2nd / last sixth | {} / {} ({:+.1} %) |\n\
         | open fds, median over the 2nd / last sixth | {} / {} ({:+.1} %) |\n\
         | in-flight gauge at the end | {in_flight:?} |\n\
         | error-level log lines not injected | {} |",
        broken_configs.load(Ordering::SeqCst),
        seen.connections,
        seen.tls_failed,
        seen.refused_streams,
        seen.goaways,
        seen.token_answers,
        seen.revoked_401s,
        seen.mixed,
        seen.unknown_credentials,
        early.0,
        late.0,
        rss_growth * 100.0,
        early.1,
        late.1,
        fd_growth * 100.0,
        bad_logs.len(),
    );

    assert!(
        violations.is_empty(),
        "{} violations, first ones: {:#?}",
        violations.len(),
        &violations[..violations.len().min(20)]
    );
    assert_eq!(seen.mixed, 0, "mixed pairs reached Twilio");
    assert_eq!(
        seen.unknown_credentials, 0,
        "unknown credentials reached Twilio"
    );
    assert_eq!(stale, 0, "pairs used more than 1 s after their swap");
    assert!(bad_logs.is_empty(), "unexpected log lines: {bad_logs:#?}");
    assert_eq!(in_flight, Some(0.0), "in-flight requests left at the end");
    assert!(rss_growth < 0.10, "RSS grew {:.1} %", rss_growth * 100.0);
    assert!(fd_growth < 0.10, "open fds grew {:.1} %", fd_growth * 100.0);
    // Every fault was exercised.
    assert!(swaps_done >= (seconds / 2 - 2) as usize);
    assert!(seen.tls_failed > 0 && seen.refused_streams > 0 && seen.goaways > 0);
    assert!(seen.revoked_401s > 0 && storms > 0);
    for kind in ["close", "slow", "hang", "cut", "error500"] {
        assert!(
            counts.keys().any(|(k, _)| *k == Kind::Chaos(kind)),
            "no {kind} fault was sent"
        );
    }
}
