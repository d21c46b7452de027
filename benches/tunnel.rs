//! Transparent mode's cost: one request through the real sidecar (in this process, against the
//! TLS stand-in for Twilio) on a kept-alive plain HTTP/1.1 connection, beside the same request
//! inside a kept-alive CONNECT tunnel (TLS to the sidecar with a leaf from its local CA), and
//! the cost of a new tunnel (CONNECT, TLS handshake with a cached leaf, first request).
//!
//! Run: `cargo bench --bench tunnel`. The goal: a tunnel's request within 10 % of a plain one.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use twilio_sidecar::app::Sidecar;
use twilio_sidecar::config::hosts::TWILIO_PRODUCT_HOSTS;
use twilio_sidecar::config::Config;
use twilio_sidecar::dev::stand_in::StandIn;

const SID: &str = "AC0123456789abcdef0123456789abcdef";

struct Setup {
    proxy: SocketAddr,
    ca: rustls_pki_types::CertificateDer<'static>,
    _dir: tempfile::TempDir,
    _stand_in: StandIn,
}

async fn setup() -> Setup {
    let stand_in = StandIn::start(&TWILIO_PRODUCT_HOSTS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = twilio_sidecar::intercept::ca::init(dir.path(), 30).unwrap();
    let text = format!(
        r#"
[listen]
address = "127.0.0.1:0"
workers = 1
[admin]
address = "127.0.0.1:0"
[upstream]
connect_to = "{}"
[reload]
watch = false
[[accounts]]
sid = "{SID}"
credential = {{ type = "api_key", key_sid = "SK0123456789abcdef0123456789abcdef", secret = "bench-secret" }}
[policy]
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json"]
[intercept]
ca_cert = {:?}
ca_key = {{ file = {:?} }}
"#,
        stand_in.addr(),
        files.cert,
        files.key
    );
    let (config, warnings) = Config::parse(&text, dir.path(), "bench").unwrap();
    let sidecar = Sidecar::start(config, warnings, vec![stand_in.ca_der()])
        .await
        .unwrap();
    let proxy = sidecar.proxy_addr();
    tokio::spawn(sidecar.serve(std::future::pending()));
    let pem = std::fs::read(&files.cert).unwrap();
    use rustls_pki_types::pem::PemObject;
    let ca = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    Setup {
        proxy,
        ca,
        _dir: dir,
        _stand_in: stand_in,
    }
}

fn request(host: &str) -> Request<Full<Bytes>> {
    Request::post(format!("/2010-04-01/Accounts/{SID}/Messages.json"))
        .header("host", host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"To=%2B15005550006&Body=bench",
        )))
        .unwrap()
}

type Sender = http1::SendRequest<Full<Bytes>>;

async fn plain(proxy: SocketAddr) -> Sender {
    let tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// CONNECT, then TLS to the sidecar as `api.twilio.com` trusting only its CA, then HTTP/1.1.
async fn tunnel(proxy: SocketAddr, tls: &tokio_rustls::TlsConnector) -> Sender {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    tcp.write_all(b"CONNECT api.twilio.com:443 HTTP/1.1\r\nHost: api.twilio.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let name = rustls_pki_types::ServerName::try_from("api.twilio.com").unwrap();
    let stream = tls.connect(name, tcp).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(sender: &mut Sender, host: &str) {
    sender.ready().await.unwrap();
    let response = sender.send_request(request(host)).await.unwrap();
    assert_eq!(response.status(), 200);
    response.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let setup = rt.block_on(setup());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(setup.ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client));

    let mut plain_sender = rt.block_on(plain(setup.proxy));
    let proxy_host = setup.proxy.to_string();
    c.bench_function(
        "plain HTTP/1.1 to the sidecar, kept alive: one request",
        |b| b.iter(|| rt.block_on(send(&mut plain_sender, &proxy_host))),
    );
    let mut tunnel_sender = rt.block_on(tunnel(setup.proxy, &tls));
    c.bench_function("CONNECT tunnel, kept alive: one request", |b| {
        b.iter(|| rt.block_on(send(&mut tunnel_sender, "api.twilio.com")))
    });
    c.bench_function(
        "new tunnel: CONNECT + TLS handshake (cached leaf) + first request",
        |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut sender = tunnel(setup.proxy, &tls).await;
                    send(&mut sender, "api.twilio.com").await;
                })
            })
        },
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
