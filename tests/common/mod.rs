//! Test harness: the real `twilio-sidecar` binary, spawned on `127.0.0.1:0` against the real
//! TLS stand-in for Twilio (rcgen-made CA, certificates for the Twilio host names), with its
//! logs captured, plus a raw HTTP/1.1 client that sends exactly the bytes a test writes.

#![allow(dead_code)]

pub mod webhook_app;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_sidecar::config::hosts::TWILIO_PRODUCT_HOSTS;
use twilio_sidecar::dev::stand_in::StandIn;

pub const SID: &str = "AC00000000000000000000000000000001";
pub const SID2: &str = "AC00000000000000000000000000000002";
pub const KEY_SID: &str = "SK0123456789abcdef0123456789abcdef";
pub const SECRET: &str = "s3cr3t-api-key-secret-for-tests-7f3a9c";
pub const TOKEN2: &str = "auth-token-two-for-tests-41b6e2d0c9";
pub const TOKEN2_ENV: &str = "TS_TEST_TOKEN_2";

/// `Basic base64(user:secret)`.
pub fn basic(user: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"))
    )
}

/// The header the sidecar must attach for the default account.
pub fn expected_authorization() -> String {
    basic(KEY_SID, SECRET)
}

/// Values that must never show up in logs, metrics, error bodies or /config.
pub fn secret_needles() -> Vec<String> {
    vec![
        SECRET.to_string(),
        TOKEN2.to_string(),
        expected_authorization(),
        basic(SID2, TOKEN2),
        base64::engine::general_purpose::STANDARD.encode(format!("{KEY_SID}:{SECRET}")),
    ]
}

/// The standard test policy.
pub const POLICY: &str = r#"
[policy]
allow = [
  "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
  "GET /2010-04-01/Accounts/{AccountSid}/Messages*",
  "verify.twilio.com /v2/Services/*/Verifications*",
  "GET lookups.twilio.com /v2/PhoneNumbers/*",
  "/2010-04-01/Accounts/{AccountSid}/*",
  "GET /2010-04-01/Accounts/*/Recordings.json",
]
deny = ["* /2010-04-01/Accounts/{AccountSid}/Keys*"]
"#;

/// Paths and addresses a config template can use.
pub struct Ctx {
    pub dir: PathBuf,
    pub stand_in: SocketAddr,
}

/// The standard config: two accounts (API key from files, Auth Token from env), the stand-in
/// behind `connect_to`, its CA in `ca_file`.
pub fn standard_config(ctx: &Ctx, upstream_extra: &str, policy: &str) -> String {
    format!(
        r#"
{head}
request_timeout = "5s"
{upstream_extra}

[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "key_sid" }}, secret = {{ file = "secret" }} }}

[[accounts]]
sid = "{SID2}"
credential = {{ type = "auth_token", token = {{ env = "{TOKEN2_ENV}" }} }}

{policy}
"#,
        head = listeners_and_upstream(ctx)
    )
}

/// Both listeners on port 0 and the `[upstream]` table pointing at the stand-in (more
/// `[upstream]` keys may follow).
pub fn listeners_and_upstream(ctx: &Ctx) -> String {
    format!(
        r#"
[listen]
address = "127.0.0.1:0"
# What some tests call the sidecar in Host, as apps call a gateway by its Service name.
names = ["sidecar.local"]

[admin]
address = "127.0.0.1:0"

[upstream]
connect_to = "{}"
ca_file = "ca.pem""#,
        ctx.stand_in
    )
}

/// A running sidecar process and its stand-in.
pub struct Harness {
    pub stand_in: StandIn,
    pub dir: tempfile::TempDir,
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// The webhook listener, with `[webhooks]`.
    pub webhooks: Option<SocketAddr>,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Harness {
    /// The standard config with the standard policy.
    pub async fn start() -> Harness {
        Self::start_with(|ctx| standard_config(ctx, "", POLICY)).await
    }

    /// A config built by `make` (it may write more files into `ctx.dir`).
    pub async fn start_with(make: impl FnOnce(&Ctx) -> String) -> Harness {
        Self::start_against(stand_in().await, make).await
    }

    /// Like [`Harness::start_with`] with a given stand-in.
    pub async fn start_against(stand_in: StandIn, make: impl FnOnce(&Ctx) -> String) -> Harness {
        Self::start_as(sidecar_command(), stand_in, make).await
    }

    /// Like [`Harness::start_with`], the sidecar limited to `n` open file descriptors (soft
    /// and hard, as `ulimit -n` sets them).
    pub async fn start_with_fd_limit(n: u64, make: impl FnOnce(&Ctx) -> String) -> Harness {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_twilio-sidecar"))
            .env(TOKEN2_ENV, TOKEN2)
            .env_remove("TWILIO_SIDECAR_LOG");
        Self::start_as(cmd, stand_in().await, make).await
    }

    /// Like [`Harness::start_against`], running `command` (the binary, with its environment).
    pub async fn start_as(
        mut command: Command,
        stand_in: StandIn,
        make: impl FnOnce(&Ctx) -> String,
    ) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("key_sid"), format!("{KEY_SID}\n")).unwrap();
        std::fs::write(dir.path().join("secret"), format!("{SECRET}\n")).unwrap();
        std::fs::write(dir.path().join("ca.pem"), stand_in.ca_pem()).unwrap();
        let ctx = Ctx {
            dir: dir.path().to_path_buf(),
            stand_in: stand_in.addr(),
        };
        let config = make(&ctx);
        let config_path = dir.path().join("sidecar.toml");
        std::fs::write(&config_path, config).unwrap();

        let mut child = command
            .args(["--log-format", "json", "run", "--config"])
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn twilio-sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, SocketAddr)>();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if let (Some(msg), Some(addr)) = (v["message"].as_str(), v["addr"].as_str()) {
                        if let Ok(addr) = addr.parse() {
                            let _ = tx.send((msg.to_string(), addr));
                        }
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (mut proxy, mut admin, mut webhooks) = (None, None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while proxy.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((msg, addr)) if msg == "proxy listening" => proxy = Some(addr),
                Ok((msg, addr)) if msg == "admin listening" => admin = Some(addr),
                // Logged before the other two.
                Ok((msg, addr)) if msg == "webhooks listening" => webhooks = Some(addr),
                Ok(_) => {}
                Err(_) => {
                    let status = child.try_wait();
                    panic!(
                        "sidecar did not start ({status:?}); logs:\n{}",
                        logs.lock().unwrap().join("\n")
                    );
                }
            }
        }
        Harness {
            stand_in,
            dir,
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            webhooks,
            logs,
        }
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until an access-log line for `request_id` appears (logs are written after the
    /// response head), then returns all lines.
    pub async fn logs_after(&self, needle: &str) -> Vec<String> {
        for _ in 0..200 {
            let logs = self.logs();
            if logs.iter().any(|l| l.contains(needle)) {
                return logs;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.logs()
    }

    /// Sends raw bytes to the proxy listener and reads the response.
    pub async fn raw(&self, request: &str) -> RawResponse {
        raw_request(self.proxy, request.as_bytes()).await
    }

    /// A well-formed HTTP/1.1 request to the proxy.
    pub async fn send(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> RawResponse {
        let host = self.proxy.to_string();
        let bytes = http1_request(method, target, &host, headers, body);
        raw_request(self.proxy, &bytes).await
    }

    /// The `Authorization` values of the last request the stand-in received.
    pub fn last_authorization(&self) -> Vec<String> {
        self.stand_in
            .requests()
            .last()
            .map(|r| r.header_values("authorization"))
            .unwrap_or_default()
    }

    /// GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> RawResponse {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.admin
        );
        raw_request(self.admin, req.as_bytes()).await
    }

    /// The Prometheus text from `/metrics`.
    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }
}

/// Server-side TLS with the stand-in PKI's certificate, offering exactly `alpn`: for raw test
/// servers that script Twilio's side byte by byte.
pub fn tls_server_config(
    pki: &twilio_sidecar::dev::stand_in::ThrowawayPki,
    alpn: &[&[u8]],
) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            pki.server_chain.clone(),
            rustls_pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der()),
        )
        .unwrap();
    tls.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(tls)
}

/// [`tls_server_config`] as an acceptor.
pub fn tls_acceptor(
    pki: &twilio_sidecar::dev::stand_in::ThrowawayPki,
    alpn: &[&[u8]],
) -> tokio_rustls::TlsAcceptor {
    tokio_rustls::TlsAcceptor::from(tls_server_config(pki, alpn))
}

/// Upstream settings for `api.twilio.com` (and `verify.twilio.com`) at `connect_to`, with the
/// pool's idle timeout and cap given.
pub fn upstream_settings(
    connect_to: SocketAddr,
    idle_timeout: Duration,
    max_idle: usize,
) -> twilio_sidecar::config::UpstreamConfig {
    twilio_sidecar::config::UpstreamConfig {
        default_host: "api.twilio.com".into(),
        allowed_hosts: vec!["api.twilio.com".into(), "verify.twilio.com".into()],
        connect_to: Some(connect_to),
        ca_file: None,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        pool_idle_timeout: idle_timeout,
        pool_max_idle_per_host: max_idle,
        http2_max_streams: 100,
        queue_timeout: Duration::from_secs(5),
        max_queued: 1000,
        retry_429: 3,
        forward_headers: Vec::new(),
    }
}

/// A stand-in for the product hosts plus an edge host, as a region/edge deployment would use.
pub async fn stand_in() -> StandIn {
    let mut names = TWILIO_PRODUCT_HOSTS.to_vec();
    names.push("api.dublin.ie1.twilio.com");
    StandIn::start(&names).await.expect("stand-in")
}

/// `POST /reload` on the admin listener.
pub async fn post_reload(admin: SocketAddr) -> RawResponse {
    let req = format!(
        "POST /reload HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    raw_request(admin, req.as_bytes()).await
}

/// The Python that has the official SDK: `$TS_SDK_PYTHON`, else the virtualenv
/// `scripts/test-all.sh` makes under `target/test-venv`, else `python3`.
pub fn sdk_python() -> String {
    if let Ok(p) = std::env::var("TS_SDK_PYTHON") {
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv/bin/python3");
    if venv.exists() {
        return venv.display().to_string();
    }
    "python3".to_string()
}

/// The binary under test.
pub fn sidecar_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twilio-sidecar"));
    cmd.env(TOKEN2_ENV, TOKEN2).env_remove("TWILIO_SIDECAR_LOG");
    cmd
}

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Everything received, for assertions on the raw bytes.
    pub raw: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    /// Asserts a Twilio-shaped sidecar error and returns its code.
    pub fn twilio_error(&self, status: u16) -> u64 {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let v = self.json();
        assert_eq!(v["status"], status, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(v["more_info"].as_str().is_some(), "{v}");
        v["code"].as_u64().expect("code")
    }
}

/// A request to send: method, target, headers, body.
pub type RequestCase<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a [u8]);

/// A well-formed HTTP/1.1 request (`Connection: close`), with `Host: default_host` unless
/// `headers` has one.
pub fn http1_request(
    method: &str,
    target: &str,
    default_host: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {default_host}\r\n"));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The stand-in's answer that echoes the request body back, doubled: large bodies both ways.
pub fn doubled_echo(body: &[u8]) -> twilio_sidecar::dev::stand_in::Reply {
    let mut doubled = body.to_vec();
    doubled.extend_from_slice(body);
    twilio_sidecar::dev::stand_in::Reply {
        status: http::StatusCode::CREATED,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: bytes::Bytes::from(doubled),
        delay: Duration::ZERO,
    }
}

/// Sends `bytes` on a fresh connection and reads until the peer closes (or the response is
/// complete by its Content-Length / chunked framing).
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_response(&mut stream).await
}

/// Reads one response from `stream` (to the peer's close when it has no framing); the
/// stream stays open for the next request when the response was framed.
pub async fn read_response(stream: &mut TcpStream) -> RawResponse {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(resp) = parse_response(&buf, false) {
            return resp;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(_)) => break,
            Err(_) => panic!(
                "timed out reading response; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    }
    parse_response(&buf, true).unwrap_or_else(|| RawResponse {
        status: 0,
        headers: Vec::new(),
        body: Vec::new(),
        raw: buf,
    })
}

/// Reads until the peer closes; `true` if it did within `within`.
pub async fn closed_by_peer(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// `eof`: the peer closed, so a body without framing runs to the end.
fn parse_response(buf: &[u8], eof: bool) -> Option<RawResponse> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &buf[end + 4..];
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len.parse().ok()?;
        if rest.len() < len {
            return None;
        }
        rest[..len].to_vec()
    } else if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        let mut at = 0;
        loop {
            let line_end = rest[at..].windows(2).position(|w| w == b"\r\n")? + at;
            let size =
                usize::from_str_radix(std::str::from_utf8(&rest[at..line_end]).ok()?.trim(), 16)
                    .ok()?;
            at = line_end + 2;
            if size == 0 {
                break;
            }
            if rest.len() < at + size + 2 {
                return None;
            }
            body.extend_from_slice(&rest[at..at + size]);
            at += size + 2;
        }
        body
    } else if status == 204 || status == 304 {
        Vec::new()
    } else if eof {
        rest.to_vec()
    } else {
        return None;
    };
    Some(RawResponse {
        status,
        headers,
        body,
        raw: buf.to_vec(),
    })
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
