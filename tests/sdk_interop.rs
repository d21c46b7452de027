//! The official Twilio SDKs (Python from PyPI, Node from npm) through the real sidecar, against
//! a spec-driven Twilio stand-in: Stoplight Prism serving Twilio's OpenAPI specs (api v2010,
//! verify v2, conversations v1, lookups v2, messaging v1) behind a TLS front with throwaway
//! certificates for the Twilio host names, reached through `upstream.connect_to`.
//!
//! Prism validates every request against the spec (422 for one that violates it, 401 without
//! credentials), so a request the sidecar mangles fails loudly, and the front records any
//! such rejection as well as every request that arrives without the expected credential. (Not
//! `--errors`: that also fails Twilio's own response examples, whose relative `*_uri` fields
//! do not match their declared `uri` format.) The front also emulates Twilio's paging (a next
//! page for the first Conversations page) so the SDKs must follow the sidecar's rewritten
//! links.
//!
//! Needs the packages `scripts/test-all.sh` installs (tests/sdk: `npm ci`; the Python SDK in a
//! virtualenv under `target/`, see [`sdk_python`]), hence `#[ignore]`: run with `cargo test
//! --test sdk_interop -- --ignored`. The specs are the vendored copy in `vendor/twilio-oai`.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use twilio_sidecar::dev::stand_in::ThrowawayPki;

/// The specs served, by host.
const SPECS: [(&str, &str); 5] = [
    ("api.twilio.com", "twilio_api_v2010.json"),
    ("verify.twilio.com", "twilio_verify_v2.json"),
    ("conversations.twilio.com", "twilio_conversations_v1.json"),
    ("lookups.twilio.com", "twilio_lookups_v2.json"),
    ("messaging.twilio.com", "twilio_messaging_v1.json"),
];

/// The account the specs' examples use: their paging links name it, so the sidecar must hold it.
const EXAMPLE_SID: &str = "ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// A messaging-centred policy: Calls are not allowed.
const SDK_POLICY: &str = r#"
[policy]
allow = [
  "POST /2010-04-01/Accounts/{AccountSid}/Messages.json",
  "GET /2010-04-01/Accounts/{AccountSid}/Messages*",
  "POST verify.twilio.com /v2/Services/*/Verifications",
  "GET conversations.twilio.com /v1/Conversations*",
  "GET lookups.twilio.com /v2/PhoneNumbers/*",
  "GET messaging.twilio.com /v1/Services*",
]
"#;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Prism {
    children: Vec<Child>,
    ports: HashMap<&'static str, u16>,
}

impl Drop for Prism {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts one Prism mock server per spec and waits until each accepts connections. A Prism
/// that exits instead fails the test at once, with its exit status and its stderr.
fn start_prism() -> Prism {
    let prism = root().join("tests/sdk/node_modules/.bin/prism");
    assert!(
        prism.exists(),
        "Prism is not installed: run `npm ci --prefix tests/sdk` (scripts/test-all.sh does)"
    );
    let specs = root().join("vendor/twilio-oai/spec/json");
    let logs = tempfile::tempdir().expect("tempdir for Prism's logs");
    let mut out = Prism {
        children: Vec::new(),
        ports: HashMap::new(),
    };
    let mut started = Vec::new();
    for (host, spec) in SPECS {
        let spec = specs.join(spec);
        assert!(spec.exists(), "missing vendored spec {}", spec.display());
        let port = free_port();
        let log = logs.path().join(format!("{host}.log"));
        let child = Command::new(&prism)
            .args(["mock", "-h", "127.0.0.1", "-p", &port.to_string()])
            .arg(&spec)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("Prism log file"))
            .spawn()
            .expect("start prism");
        out.children.push(child);
        out.ports.insert(host, port);
        started.push((host, port, log));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for (i, (host, port, log)) in started.iter().enumerate() {
        while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
            if let Ok(Some(status)) = out.children[i].try_wait() {
                panic!(
                    "prism for {host} exited ({status}) before listening on port {port}:\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "prism for {host} did not start on port {port} within 120 s:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    out
}

/// What the TLS front saw that it should not have.
#[derive(Default)]
struct FrontLog {
    violations: Vec<String>,
    requests: Vec<(String, String, String)>,
}

/// The TLS front: terminates TLS for the Twilio names, checks the credential, forwards to the
/// Prism for the host, and adds a second page to the first Conversations page.
async fn start_front(
    ports: HashMap<&'static str, u16>,
    expected: String,
) -> (SocketAddr, String, Arc<Mutex<FrontLog>>) {
    let names: Vec<&str> = SPECS.iter().map(|(h, _)| *h).collect();
    let pki = ThrowawayPki::new(&names).unwrap();
    let ca_pem = pki.ca_pem.clone();
    let acceptor = pki_acceptor(&pki);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(FrontLog::default()));
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let (ports, log2, expected) = (Arc::new(ports), log.clone(), Arc::new(expected));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, ports, log, client, expected) = (
                acceptor.clone(),
                ports.clone(),
                log2.clone(),
                client.clone(),
                expected.clone(),
            );
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |req| {
                    let (ports, log, client, expected) =
                        (ports.clone(), log.clone(), client.clone(), expected.clone());
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            forward(req, &ports, &log, &client, &expected).await,
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, ca_pem, log)
}

fn pki_acceptor(pki: &ThrowawayPki) -> tokio_rustls::TlsAcceptor {
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(pki.server_key_der());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pki.server_chain.clone(), key)
        .unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(tls))
}

async fn forward(
    req: Request<Incoming>,
    ports: &HashMap<&'static str, u16>,
    log: &Mutex<FrontLog>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    expected: &str,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(|a| a.host().to_string()))
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map_or("/".to_string(), |pq| pq.to_string());
    let auth = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|a| a.to_str().ok())
        .unwrap_or("")
        .to_string();
    log.lock()
        .unwrap()
        .requests
        .push((host.clone(), parts.method.to_string(), target.clone()));
    if auth != expected {
        log.lock().unwrap().violations.push(format!(
            "{} {host}{target} arrived with Authorization {auth:?}",
            parts.method
        ));
        return text(StatusCode::UNAUTHORIZED, "wrong credential");
    }
    let Some(port) = ports.get(host.as_str()) else {
        log.lock()
            .unwrap()
            .violations
            .push(format!("request for unserved host {host}"));
        return text(StatusCode::BAD_GATEWAY, "no such host here");
    };
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut upstream = Request::builder()
        .method(parts.method.clone())
        .uri(format!("http://127.0.0.1:{port}{target}"));
    for (k, v) in &parts.headers {
        if k != header::HOST {
            upstream = upstream.header(k, v);
        }
    }
    let resp = match client
        .request(upstream.body(Full::new(body)).unwrap())
        .await
    {
        Ok(r) => r,
        Err(e) => {
            log.lock()
                .unwrap()
                .violations
                .push(format!("prism unreachable: {e}"));
            return text(StatusCode::BAD_GATEWAY, "prism unreachable");
        }
    };
    let status = resp.status();
    let content_type = resp.headers().get(header::CONTENT_TYPE).cloned();
    let mut bytes = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if status.is_client_error() || status.is_server_error() {
        log.lock().unwrap().violations.push(format!(
            "Prism rejected {} {host}{target}: {status} {}",
            parts.method,
            String::from_utf8_lossy(&bytes)
        ));
    }
    // Twilio paging: the first page of Conversations has a next page.
    if host == "conversations.twilio.com"
        && parts.uri.path() == "/v1/Conversations"
        && !target.contains("PageToken")
    {
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["meta"]["next_page_url"] =
            "https://conversations.twilio.com/v1/Conversations?PageSize=1&Page=1&PageToken=PT1"
                .into();
        bytes = Bytes::from(v.to_string());
    }
    let mut out = Response::new(Full::new(bytes));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    out
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// `[intercept]` with a CA made by `twilio-sidecar ca init` in `dir/ca`.
fn intercept_table(dir: &Path) -> String {
    let out = sidecar_command()
        .args(["ca", "init", "--dir"])
        .arg(dir.join("ca"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    "\n[intercept]\nca_cert = \"ca/ca.pem\"\nca_key = { file = \"ca/ca.key\" }\n".to_string()
}

/// Runs a script with the sidecar's address, the example account and `env`.
fn run_script(
    program: &str,
    script: &Path,
    sidecar: SocketAddr,
    env: &[(&str, &str)],
) -> serde_json::Value {
    let out = Command::new(program)
        .arg(script)
        .env("SIDECAR_URL", format!("http://{sidecar}"))
        .env("ACCOUNT_SID", EXAMPLE_SID)
        .env_remove("TWILIO_EDGE")
        .env_remove("TWILIO_REGION")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .envs(env.iter().copied())
        .current_dir(root().join("tests/sdk"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {} failed:\n{stdout}\n{stderr}",
        script.display()
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn official_sdks_through_the_sidecar_against_prism() {
    sdk_scenarios(false).await;
}

/// Transparent mode: the same scenarios with no SDK configuration at all — twilio-python with
/// HTTPS_PROXY and REQUESTS_CA_BUNDLE, twilio-node with HTTP_PROXY and NODE_EXTRA_CA_CERTS —
/// through CONNECT tunnels to the sidecar, which pages and denies exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn official_sdks_with_https_proxy_and_no_code_change() {
    sdk_scenarios(true).await;
}

async fn sdk_scenarios(transparent: bool) {
    let prism = start_prism();
    let (front, front_ca, log) = start_front(prism.ports.clone(), expected_authorization()).await;
    let h = Harness::start_with(|ctx| {
        write(&ctx.dir, "front-ca.pem", &front_ca);
        let allowed = SPECS
            .iter()
            .map(|(h, _)| format!("{h:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        standard_config(ctx, &format!("allowed_hosts = [{allowed}]"), SDK_POLICY)
            .replace(
                &format!("connect_to = \"{}\"", ctx.stand_in),
                &format!("connect_to = \"{front}\""),
            )
            .replace("ca_file = \"ca.pem\"", "ca_file = \"front-ca.pem\"")
            .replace(SID, EXAMPLE_SID)
            + &intercept_table(&ctx.dir)
    })
    .await;
    let ca = h.dir.path().join("ca/ca.pem");
    let proxy_url = format!("http://{}", h.proxy);
    let ca_path = ca.display().to_string();

    for (program, script) in [
        (sdk_python(), "python_scenarios.py"),
        ("node".to_string(), "node_scenarios.js"),
    ] {
        let before = log.lock().unwrap().requests.len();
        // Python (requests) honours HTTPS_PROXY, Node (twilio-node) HTTP_PROXY; each takes
        // the CA the way its runtime does.
        let env: Vec<(&str, &str)> = match (transparent, program.as_str()) {
            (false, _) => vec![],
            (true, "node") => vec![
                ("TRANSPARENT", "1"),
                ("HTTP_PROXY", &proxy_url),
                ("NODE_EXTRA_CA_CERTS", &ca_path),
            ],
            (true, _) => vec![
                ("TRANSPARENT", "1"),
                ("HTTPS_PROXY", &proxy_url),
                ("REQUESTS_CA_BUNDLE", &ca_path),
            ],
        };
        let results = run_script(
            &program,
            &root().join("tests/sdk").join(script),
            h.proxy,
            &env,
        );
        eprintln!("{program}: {results}");
        assert!(
            results["message_created"]
                .as_str()
                .is_some_and(|s| s.starts_with("SM") || s.starts_with("MM")),
            "{results}"
        );
        assert_eq!(results["conversations_paged"], 2, "{results}");
        assert_eq!(results["denied"]["status"], 403, "{results}");
        assert_eq!(results["denied"]["code"], 70051, "{results}");
        assert!(results["lookup"].is_string(), "{results}");
        // The second Conversations page came through the sidecar: from the rewritten link, or
        // (transparent mode) from Twilio's own link, through the proxy again.
        let requests = log.lock().unwrap().requests[before..].to_vec();
        let pages: Vec<_> = requests
            .iter()
            .filter(|(host, _, t)| {
                host == "conversations.twilio.com" && t.starts_with("/v1/Conversations")
            })
            .collect();
        assert_eq!(pages.len(), 2, "{requests:?}");
        assert!(pages[1].2.contains("PageToken=PT1"), "{pages:?}");
        assert!(requests
            .iter()
            .any(|(host, m, t)| host == "verify.twilio.com"
                && m == "POST"
                && t.ends_with("/Verifications")));
        assert!(requests
            .iter()
            .any(|(host, _, t)| host == "lookups.twilio.com"
                && t.starts_with("/v2/PhoneNumbers/")
                && t.contains("15108675310")));
        assert!(
            !requests.iter().any(|(_, _, t)| t.contains("/Calls")),
            "the denied call reached Twilio"
        );
    }
    if transparent {
        twilio_cli_with_http_proxy(&proxy_url, &ca_path, &log);
        // It was the tunnels: every product host was reached through a CONNECT.
        let m = h.metrics().await;
        let opened = m
            .lines()
            .find(|l| l.starts_with(r#"twilio_sidecar_tunnels_total{result="opened"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(opened >= 8, "{opened} tunnels: {m}");
    }
    let log = log.lock().unwrap();
    assert!(log.violations.is_empty(), "{:#?}", log.violations);
    drop(prism);
}

/// The twilio-cli from the npm registry, configured only by the environment: an API key it
/// believes in (the sidecar replaces it), HTTP_PROXY (its https-proxy-agent, like
/// twilio-node's, reads nothing else) and NODE_EXTRA_CA_CERTS. It creates a message through a
/// tunnel, and a call the policy denies surfaces as the CLI's own error with 70051.
fn twilio_cli_with_http_proxy(proxy_url: &str, ca_path: &str, log: &Mutex<FrontLog>) {
    let home = tempfile::tempdir().unwrap();
    let cli = |args: &[&str]| {
        let out = Command::new(root().join("tests/sdk/node_modules/.bin/twilio"))
            .args(args)
            .args(["-o", "json"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", home.path())
            .env("TWILIO_ACCOUNT_SID", EXAMPLE_SID)
            .env("TWILIO_API_KEY", "SKffffffffffffffffffffffffffffffff")
            .env("TWILIO_API_SECRET", "the-app-holds-no-real-secret")
            .env("HTTP_PROXY", proxy_url)
            .env("NODE_EXTRA_CA_CERTS", ca_path)
            // No update check against the npm registry: only loopback traffic.
            .env("TWILIO_SKIP_NEW_VERSION_CHECK", "true")
            .current_dir(home.path())
            .output()
            .unwrap_or_else(|e| panic!("cannot run twilio-cli: {e}"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let before = log.lock().unwrap().requests.len();
    let (ok, stdout, stderr) = cli(&[
        "api:core:messages:create",
        "--from",
        "+15017122661",
        "--to",
        "+15558675310",
        "--body",
        "sent by twilio-cli through the sidecar",
    ]);
    assert!(ok, "twilio-cli failed:\n{stdout}\n{stderr}");
    let created: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"));
    let sid = created[0]["sid"].as_str().unwrap_or_default();
    assert!(sid.starts_with("SM") || sid.starts_with("MM"), "{stdout}");

    let (ok, stdout, stderr) = cli(&[
        "api:core:calls:create",
        "--from",
        "+15017122661",
        "--to",
        "+15558675310",
        "--url",
        "http://demo.twilio.com/docs/voice.xml",
    ]);
    assert!(!ok, "the denied call succeeded: {stdout}");
    assert!(
        format!("{stdout}{stderr}").contains("70051"),
        "the denial did not surface as 70051:\n{stdout}\n{stderr}"
    );
    let requests = log.lock().unwrap().requests[before..].to_vec();
    assert!(
        requests.iter().any(|(host, m, t)| host == "api.twilio.com"
            && m == "POST"
            && t.ends_with("/Messages.json")),
        "{requests:?}"
    );
    assert!(
        !requests.iter().any(|(_, _, t)| t.contains("/Calls")),
        "the denied call reached Twilio"
    );
}

/// The official SDKs as clients of a gateway: each authenticates with its local key as the
/// SDK's username and password, sends a message (Twilio's stand-in sees the account's API key,
/// never the local one), and is refused another client's operation with 70051 as a normal
/// SDK exception; a wrong secret is the SDK's usual 20003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn official_sdks_authenticate_as_clients() {
    const LOCAL: &str = "sdk-client-local-secret-0123456789abcdefghi";
    let hash: String = twilio_sidecar::gate::clients::secret_hash(LOCAL.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let h = Harness::start_with(|ctx| {
        standard_config(
            ctx,
            "",
            &format!(
                r#"
[policy]
allow = []
[[clients]]
id = "billing-api"
secret_sha256 = ["{hash}"]
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json"]
[[clients]]
id = "verifier"
secret_sha256 = ["{hash}"]
allow = ["POST verify.twilio.com /v2/Services/*/Verifications"]
"#
            ),
        )
    })
    .await;
    for (program, script) in [
        (sdk_python(), "python_clients.py"),
        ("node".to_string(), "node_clients.js"),
    ] {
        let script = root().join("tests/sdk").join(script);
        let env = [
            ("ACCOUNT_SID", SID),
            ("CLIENT_ID", "billing-api"),
            ("CLIENT_SECRET", LOCAL),
        ];
        h.stand_in.clear();
        let results = run_script(&program, &script, h.proxy, &env);
        eprintln!("{program} as billing-api: {results}");
        assert_eq!(results["message_created"], true, "{results}");
        assert_eq!(results["verification"]["status"], 403, "{results}");
        assert_eq!(results["verification"]["code"], 70051, "{results}");
        let seen = h.stand_in.requests();
        assert_eq!(seen.len(), 1, "only the message reached Twilio");
        assert_eq!(
            seen[0].header_values("authorization"),
            vec![expected_authorization()]
        );
        assert!(!format!("{:?}", seen[0].headers).contains(LOCAL));

        let env = [
            ("ACCOUNT_SID", SID),
            ("CLIENT_ID", "billing-api"),
            ("CLIENT_SECRET", "not-the-local-secret"),
        ];
        let results = run_script(&program, &script, h.proxy, &env);
        eprintln!("{program} with a wrong secret: {results}");
        assert_eq!(results["message_created"]["status"], 401, "{results}");
        assert_eq!(results["message_created"]["code"], 20003, "{results}");
    }
}

/// A token minted by the sidecar next to the official SDKs' `AccessToken` for the same
/// identity, TTL and grants: both verified with the API key secret (PyJWT, jsonwebtoken), the
/// headers equal, every claim the SDK writes present with the same value (times as offsets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn access_tokens_match_the_sdks() {
    const APP: &str = "AP00000000000000000000000000000001";
    const CHAT: &str = "IS00000000000000000000000000000001";
    let h = Harness::start_with(|ctx| {
        standard_config(ctx, "", POLICY)
            + &format!(
                r#"
[access_tokens]
identities = ["user-*"]
voice = {{ outgoing_application_sids = ["{APP}"], incoming = true }}
video = {{ rooms = ["*"] }}
chat = {{ service_sids = ["{CHAT}"] }}
"#
            )
    })
    .await;
    let body = format!(
        r#"{{"identity": "user-42", "ttl": 900, "grants": {{"voice": {{"outgoing_application_sid": "{APP}", "incoming_allow": true}}, "video": {{"room": "room-9"}}, "chat": {{"service_sid": "{CHAT}"}}}}}}"#
    );
    let resp = h
        .send("POST", "/_sidecar/access-tokens", &[], body.as_bytes())
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let token = resp.json()["token"].as_str().unwrap().to_string();
    for (program, script) in [
        (sdk_python(), "python_access_token.py"),
        ("node".to_string(), "node_access_token.js"),
    ] {
        let env = [
            ("KEY_SID", KEY_SID),
            ("SECRET", SECRET),
            ("ACCOUNT_SID", SID),
            ("IDENTITY", "user-42"),
            ("TTL", "900"),
            ("APP_SID", APP),
            ("ROOM", "room-9"),
            ("CHAT_SID", CHAT),
            ("SIDECAR_TOKEN", &token),
        ];
        let out = run_script(
            &program,
            &root().join("tests/sdk").join(script),
            h.proxy,
            &env,
        );
        eprintln!("{program}: {out}");
        let (ours, sdk) = (&out["sidecar"], &out["sdk"]);
        assert_eq!(ours["header"], sdk["header"], "{program}");
        let (ours, sdk) = (
            ours["claims"].as_object().unwrap(),
            sdk["claims"].as_object().unwrap(),
        );
        let start = |c: &serde_json::Map<String, serde_json::Value>| {
            c.get("iat")
                .or(c.get("nbf"))
                .and_then(|v| v.as_u64())
                .unwrap()
        };
        for (key, value) in sdk {
            let mine = ours
                .get(key)
                .unwrap_or_else(|| panic!("{program}: no {key} claim"));
            match key.as_str() {
                "iat" | "nbf" => assert!(mine.is_u64(), "{key}"),
                "exp" => assert_eq!(
                    mine.as_u64().unwrap() - start(ours),
                    value.as_u64().unwrap() - start(sdk),
                    "{program}: lifetime"
                ),
                "jti" => assert_eq!(
                    mine.as_str().unwrap().rsplit_once('-').unwrap().0,
                    value.as_str().unwrap().rsplit_once('-').unwrap().0
                ),
                _ => assert_eq!(mine, value, "{program}: claim {key}"),
            }
        }
    }
}

/// Runs a signature script with `CASES` and returns its `[{"url", "signature"}]`.
fn sdk_signatures(program: &str, script: &str, cases: &serde_json::Value) -> Vec<(String, String)> {
    let out = Command::new(program)
        .arg(root().join("tests/sdk").join(script))
        .env("CASES", cases.to_string())
        .current_dir(root().join("tests/sdk"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {script} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    list.as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["url"].as_str().unwrap().to_string(),
                c["signature"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Webhooks signed by the official SDKs' own validators (twilio-python's `RequestValidator`,
/// twilio-node's `getExpectedTwilioSignature` / `getExpectedBodyHash`): form posts with
/// repeated names, duplicates, `+`, `&` and non-ASCII text, a GET, a JSON body with
/// `bodySHA256`, URLs with and without `:443`, and a subaccount's own token. Each verifies
/// and reaches the app byte for byte; the same signature on a tampered body, query or URL is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn webhook_signatures_from_the_sdks_verify() {
    use common::webhook_app::*;

    let app = WebhookApp::start().await;
    let app_addr = app.addr;
    let h = Harness::start_with(move |ctx| webhook_config(ctx, app_addr, "")).await;
    let sms = vec![
        ("AccountSid", SID),
        ("From", "+14155550100"),
        ("To", "+14155550199"),
        ("Body", "Olá & até já: 100% +1 = ☺"),
        ("MediaUrl", "https://example.com/b.png"),
        ("MediaUrl", "https://example.com/a.png"),
        ("MediaUrl", "https://example.com/a.png"),
    ];
    let form_body = |params: &[(&str, &str)]| {
        params
            .iter()
            .map(|(k, v)| {
                let enc = |s: &str| {
                    s.bytes()
                        .map(|b| match b {
                            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                                (b as char).to_string()
                            }
                            b' ' => "+".to_string(),
                            _ => format!("%{b:02X}"),
                        })
                        .collect::<String>()
                };
                format!("{}={}", enc(k), enc(v))
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    let json_body =
        format!(r#"{{"AccountSid":"{SID2}","type":"com.twilio.messaging.message.delivered"}}"#);
    // (method, signed URL, params or JSON body, token)
    let cases = serde_json::json!([
        { "token": TOKEN_A, "url": format!("{PUBLIC}/sms?tenant=one"), "params": sms, "body": null },
        { "token": TOKEN_A, "url": "https://hooks.example.com:443/sms?tenant=one", "params": sms, "body": null },
        { "token": TOKEN_B, "url": format!("{PUBLIC}/status?AccountSid={SID2}&CallStatus=in-progress"), "params": null, "body": null },
        { "token": TOKEN_B, "url": format!("{PUBLIC}/events"), "params": null, "body": json_body },
    ]);
    let methods = ["POST", "POST", "GET", "POST"];
    for (program, script) in [
        (sdk_python(), "python_webhook_signatures.py"),
        ("node".to_string(), "node_webhook_signatures.js"),
    ] {
        let signed = sdk_signatures(&program, script, &cases);
        for (i, (url, signature)) in signed.iter().enumerate() {
            let target = url
                .strip_prefix("https://hooks.example.com:443")
                .or_else(|| url.strip_prefix(PUBLIC))
                .unwrap();
            let (content_type, body) = match i {
                0 | 1 => (FORM, form_body(&sms)),
                2 => ("", String::new()),
                _ => ("application/json", json_body.clone()),
            };
            let mut headers = vec![("X-Twilio-Signature", signature.as_str())];
            if !content_type.is_empty() {
                headers.push(("Content-Type", content_type));
            }
            let before = app.requests().len();
            let resp = deliver(&h, methods[i], target, &headers, body.as_bytes()).await;
            assert_eq!(resp.status, 200, "{program} case {i}: {}", resp.text());
            let got = app.requests();
            assert_eq!(got.len(), before + 1);
            let last = got.last().unwrap();
            assert_eq!(last.body, body.as_bytes(), "{program} case {i}");
            let account = if i < 2 { SID } else { SID2 };
            assert_eq!(last.header_values("x-twilio-sidecar-verified"), [account]);

            // The same signature on anything else is refused.
            let other_target = format!(
                "{target}{}x=1",
                if target.contains('?') { '&' } else { '?' }
            );
            let resp = deliver(&h, methods[i], &other_target, &headers, body.as_bytes()).await;
            assert_eq!(resp.twilio_error(403), 79600, "{program} case {i}, query");
            if !body.is_empty() {
                let tampered = body
                    .replacen("delivered", "failed", 1)
                    .replacen("100", "900", 1);
                let resp = deliver(&h, methods[i], target, &headers, tampered.as_bytes()).await;
                assert_eq!(resp.twilio_error(403), 79600, "{program} case {i}, body");
            }
            assert_eq!(
                app.requests().len(),
                before + 1,
                "{program} case {i}: forwarded a forgery"
            );
        }
    }
}

/// PKCV: requests the sidecar signed, as the Twilio stand-in received them, handed to
/// twilio-python — its `ClientValidationJwt` computes the same `rqh` for each (GET with a
/// query, form POST, JSON POST, empty DELETE) and `from_jwt` verifies the sidecar's token
/// with the registered public key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn pkcv_tokens_match_twilio_python() {
    let fixtures = root().join("tests/fixtures/pkcv");
    let key = std::fs::read_to_string(fixtures.join("key-a.pk8.pem")).unwrap();
    let h = Harness::start_with(move |ctx| {
        std::fs::write(ctx.dir.join("pkcv.pem"), &key).unwrap();
        standard_config(ctx, "", POLICY).replacen(
            "secret = { file = \"secret\" } }",
            "secret = { file = \"secret\" } }\npkcv = { credential_sid = \"CR0000000000000000000000000000000a\", private_key = { file = \"pkcv.pem\" } }",
            1,
        )
    })
    .await;
    let base = format!("/2010-04-01/Accounts/{SID}");
    let form = "To=%2B15558675310&From=%2B15017122661&Body=Ol%C3%A1+%26+adeus";
    let sent: Vec<RequestCase> = vec![
        (
            "GET",
            format!("{base}/Messages.json?To=%2B1555&PageSize=5&DateSent%3E=2024-01-01"),
            vec![],
            b"",
        ),
        (
            "POST",
            format!("{base}/Messages.json"),
            vec![("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        ),
        (
            "POST",
            format!("{base}/Calls/CA00000000000000000000000000000001.json"),
            vec![("Content-Type", "application/json")],
            br#"{"Status":"completed"}"#,
        ),
        (
            "DELETE",
            format!("{base}/Messages/SM00000000000000000000000000000001.json"),
            vec![],
            b"",
        ),
    ];
    let mut requests = Vec::new();
    for (method, target, headers, body) in &sent {
        let resp = h.send(method, target, headers, body).await;
        assert!(
            resp.status < 300 || resp.status == 404,
            "{method} {target}: {}",
            resp.text()
        );
        let r = h.stand_in.requests().last().unwrap().clone();
        let (path, query) = r.target.split_once('?').unwrap_or((&r.target, ""));
        requests.push(serde_json::json!({
            "method": r.method,
            "path": path,
            "query": query,
            "authorization": r.header_values("authorization")[0],
            "host": r.host.clone().unwrap(),
            "body": String::from_utf8(r.body.to_vec()).unwrap(),
            "token": r.header_values("twilio-client-validation")[0],
        }));
    }
    let out = Command::new(sdk_python())
        .arg(root().join("tests/sdk/python_pkcv.py"))
        .env("REQUESTS", serde_json::Value::from(requests).to_string())
        .env(
            "PUBLIC_KEY",
            std::fs::read_to_string(fixtures.join("key-a.pub.pem")).unwrap(),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, result) in results.as_array().unwrap().iter().enumerate() {
        assert_eq!(
            result["sdk_rqh"], result["token_claims"]["rqh"],
            "request {i}: {result}"
        );
        assert_eq!(result["token_claims"]["iss"], KEY_SID);
        assert_eq!(result["token_claims"]["sub"], SID);
    }
    assert_eq!(results.as_array().unwrap().len(), sent.len());
}

/// twilio-python against parameter conditions (the example anti-fraud policy's shape):
/// allowed destinations and callbacks go through, others are refused as Twilio would refuse a
/// restricted key, and only the allowed requests reach Twilio.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn official_sdk_meets_parameter_conditions() {
    const SERVICE: &str = "MG00000000000000000000000000000001";
    let h = Harness::start_with(|ctx| {
        standard_config(
            ctx,
            "",
            r#"
[policy]
allow = [
  { rule = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json", params = { To = ["+1*", "+44*"], MessagingServiceSid = ["MG*"], From = [""], StatusCallback = ["", "https://hooks.example.com/twilio/*"] } },
]
"#,
        )
    })
    .await;
    let out = run_script(
        &sdk_python(),
        &root().join("tests/sdk/python_conditions.py"),
        h.proxy,
        &[("ACCOUNT_SID", SID), ("SERVICE_SID", SERVICE)],
    );
    eprintln!("{out}");
    assert_eq!(out["allowed"], "sent", "{out}");
    assert_eq!(out["own_callback"], "sent", "{out}");
    for refused in ["abroad", "callback"] {
        assert_eq!(out[refused]["status"], 403, "{refused}: {out}");
        assert_eq!(out[refused]["code"], 70051, "{refused}: {out}");
    }
    assert!(
        out["abroad"]["message"]
            .as_str()
            .unwrap()
            .contains("parameter To"),
        "{out}"
    );
    let seen = h.stand_in.requests();
    assert_eq!(seen.len(), 2, "only the allowed messages reached Twilio");
    assert!(seen
        .iter()
        .all(|r| String::from_utf8_lossy(&r.body).contains("MessagingServiceSid=MG")));
}

/// twilio-python, which never retries a 429 itself, sends 50 messages from 10 threads into an
/// account the stand-in limits to 5 concurrent requests (answering 429 beyond, as Twilio
/// does). With `max_concurrent = 5` the sidecar queues so Twilio never says 429; without it,
/// the sidecar's retries absorb the 429s. Either way all 50 are sent and none raises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the SDK packages; scripts/test-all.sh installs them and runs this"]
async fn a_burst_from_twilio_python_meets_twilios_concurrency_limit() {
    use twilio_sidecar::dev::stand_in::{echo, Recorded, Reply};
    const LIMIT: usize = 5;
    const HOLD: Duration = Duration::from_millis(50);
    for (account_extra, upstream_extra, expect_429s) in [
        ("max_concurrent = 5", "", false),
        ("", "retry_429 = 10", true),
    ] {
        let h = Harness::start_with(|ctx| {
            standard_config(ctx, upstream_extra, POLICY).replacen(
                "secret = { file = \"secret\" } }",
                &format!("secret = {{ file = \"secret\" }} }}\n{account_extra}"),
                1,
            )
        })
        .await;
        // Twilio's concurrency limit, at the stand-in: a request is in flight for HOLD after
        // it is accepted; beyond LIMIT of them, 429.
        let accepted = Arc::new(Mutex::new(Vec::<Instant>::new()));
        let sink = accepted.clone();
        h.stand_in.set_responder(move |r: &Recorded| {
            let mut accepted = sink.lock().unwrap();
            let now = Instant::now();
            accepted.retain(|t| now.duration_since(*t) < HOLD);
            if accepted.len() >= LIMIT {
                return Reply {
                    status: StatusCode::TOO_MANY_REQUESTS,
                    headers: vec![("content-type".into(), "application/json".into())],
                    body: Bytes::from_static(
                        br#"{"code": 20429, "message": "Too Many Requests", "status": 429}"#,
                    ),
                    delay: Duration::ZERO,
                };
            }
            accepted.push(now);
            Reply {
                delay: HOLD,
                ..echo(r)
            }
        });
        let out = run_script(
            &sdk_python(),
            &root().join("tests/sdk/python_burst.py"),
            h.proxy,
            &[("ACCOUNT_SID", SID), ("COUNT", "50")],
        );
        eprintln!("{account_extra}{upstream_extra}: {out}");
        assert_eq!(out["sent"], 50, "{out}");
        assert_eq!(out["raised"].as_array().unwrap().len(), 0, "{out}");
        let metrics = h.metrics().await;
        let saw_429 = metrics
            .lines()
            .any(|l| l.starts_with("twilio_sidecar_twilio_429_total{") && !l.ends_with(" 0"));
        assert_eq!(saw_429, expect_429s, "{metrics}");
    }
}
