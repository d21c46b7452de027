//! A keep-alive HTTP/1.1 load client for what wrk cannot drive: HTTPS through a CONNECT
//! proxy, as an app with `HTTPS_PROXY` set sends it to the sidecar's transparent mode. It
//! also speaks TLS straight to a TLS-terminating proxy (nginx, HAProxy) and plain HTTP, so
//! every row of a table can be measured by the same client (`benches/load.py --tls-in`).
//!
//! Each connection is set up first (the CONNECT, the TLS handshake), off the clock; then every
//! connection sends one request at a time, as wrk does, for `--seconds`. A connection that
//! fails is counted and set up again. Prints one JSON object: requests, req/s, non-2xx
//! responses, errors, and p50/p99/p99.9 latency in microseconds.
//!
//! ```text
//! cargo build --release --example load_client
//! target/release/examples/load_client --address 127.0.0.1:8080 --mode connect --ca ca.pem \
//!     --connections 16 --seconds 8 --path /2010-04-01/Accounts/AC…/Messages.json
//! ```

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[derive(Parser)]
#[command(about = "Keep-alive HTTP/1.1 load over plain TCP, TLS, or CONNECT then TLS")]
struct Args {
    /// The server (plain, tls) or proxy (connect) to connect to.
    #[arg(long)]
    address: SocketAddr,
    #[arg(long, value_enum)]
    mode: Mode,
    /// The host named in the CONNECT, in TLS (SNI, certificate) and in `Host`.
    #[arg(long, default_value = "api.twilio.com")]
    host: String,
    /// The CA certificate (PEM) the server's or the proxy's leaf chains to.
    #[arg(long)]
    ca: Option<PathBuf>,
    #[arg(long)]
    path: String,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(long = "header")]
    headers: Vec<String>,
    /// `Proxy-Authorization` value for the CONNECT.
    #[arg(long)]
    proxy_authorization: Option<String>,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Client threads, each with its own runtime (wrk's `-t`).
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum Mode {
    Plain,
    Tls,
    Connect,
}

/// How to open one connection, shared by every thread.
struct Dialer {
    address: SocketAddr,
    mode: Mode,
    host: String,
    server_name: ServerName<'static>,
    tls: Option<TlsConnector>,
    connect_head: Vec<u8>,
}

/// One thread's counts.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    non2xx: u64,
    errors: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.non2xx += other.non2xx;
        self.errors += other.errors;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dialer = Arc::new(Dialer::new(&args)?);
    let mut request = format!("GET {} HTTP/1.1\r\nHost: {}\r\n", args.path, args.host);
    for h in &args.headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let request: Arc<[u8]> = request.into_bytes().into();

    let threads = args.threads.clamp(1, args.connections.max(1));
    let barrier = Arc::new(Barrier::new(threads + 1));
    let seconds = Duration::from_secs(args.seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            // Connections spread evenly: thread t gets every threads-th one.
            let n = (args.connections + threads - 1 - t) / threads;
            let (dialer, request, barrier) = (dialer.clone(), request.clone(), barrier.clone());
            std::thread::spawn(move || -> io::Result<Tally> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let set_up = rt.block_on(async {
                    let mut conns = Vec::with_capacity(n);
                    for _ in 0..n {
                        conns.push(dialer.dial().await?);
                    }
                    Ok::<_, io::Error>(conns)
                });
                // Every thread waits here, ready or not, so none is left at the barrier.
                barrier.wait();
                let conns = set_up?;
                let deadline = Instant::now() + seconds;
                Ok(rt.block_on(drive(conns, dialer, request, deadline)))
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let mut all = Tally::default();
    for handle in handles {
        all.add(handle.join().map_err(|_| "a client thread panicked")??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let pct = |p: f64| -> u32 {
        let l = &all.latencies_us;
        if l.is_empty() {
            return 0;
        }
        l[((l.len() as f64 * p / 100.0) as usize).min(l.len() - 1)]
    };
    let report = serde_json::json!({
        "requests": all.latencies_us.len(),
        "rps": all.latencies_us.len() as f64 / elapsed,
        "non2xx": all.non2xx,
        "errors": all.errors,
        "p50_us": pct(50.0),
        "p99_us": pct(99.0),
        "p999_us": pct(99.9),
    });
    println!("{report}");
    Ok(())
}

impl Dialer {
    fn new(args: &Args) -> Result<Dialer, Box<dyn std::error::Error>> {
        let tls = match (args.mode, &args.ca) {
            (Mode::Plain, _) => None,
            (_, None) => return Err("--ca is needed for tls and connect".into()),
            (_, Some(ca)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(ca)? {
                    roots.add(cert?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(TlsConnector::from(Arc::new(config)))
            }
        };
        let mut connect_head = format!(
            "CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n",
            host = args.host
        );
        if let Some(auth) = &args.proxy_authorization {
            connect_head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
        }
        connect_head.push_str("\r\n");
        Ok(Dialer {
            address: args.address,
            mode: args.mode,
            host: args.host.clone(),
            server_name: ServerName::try_from(args.host.clone())?,
            tls,
            connect_head: connect_head.into_bytes(),
        })
    }

    /// One connection, ready for requests.
    async fn dial(&self) -> io::Result<Conn> {
        let mut tcp = TcpStream::connect(self.address).await?;
        tcp.set_nodelay(true)?;
        if self.mode == Mode::Connect {
            tcp.write_all(&self.connect_head).await?;
            let mut head = Vec::with_capacity(256);
            let mut byte = [0u8; 1];
            // Byte by byte: nothing of the TLS that follows may be read here.
            while !head.ends_with(b"\r\n\r\n") {
                if tcp.read(&mut byte).await? == 0 || head.len() > 8192 {
                    return Err(io::Error::other(
                        "the proxy closed or sent no CONNECT answer",
                    ));
                }
                head.push(byte[0]);
            }
            if !head.starts_with(b"HTTP/1.1 200") && !head.starts_with(b"HTTP/1.0 200") {
                let line = String::from_utf8_lossy(&head);
                let line = line.lines().next().unwrap_or("");
                return Err(io::Error::other(format!("CONNECT {}: {line}", self.host)));
            }
        }
        match &self.tls {
            None => Ok(Conn::Plain(tcp)),
            Some(tls) => Ok(Conn::Tls(Box::new(
                tls.connect(self.server_name.clone(), tcp).await?,
            ))),
        }
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// This thread's connections until `deadline`, each a task on this thread's runtime.
async fn drive(
    conns: Vec<Conn>,
    dialer: Arc<Dialer>,
    request: Arc<[u8]>,
    deadline: Instant,
) -> Tally {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            tokio::spawn(run_connection(
                conn,
                dialer.clone(),
                request.clone(),
                deadline,
            ))
        })
        .collect();
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => tally.add(t),
            Err(_) => tally.errors += 1,
        }
    }
    tally
}

/// One connection's requests, one at a time; set up again after an error.
async fn run_connection(
    conn: Conn,
    dialer: Arc<Dialer>,
    request: Arc<[u8]>,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut conn = Some(conn);
    let mut buf = Vec::with_capacity(16 * 1024);
    while Instant::now() < deadline {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match dialer.dial().await {
                Ok(c) => c,
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        let answered = match &mut c {
            Conn::Plain(s) => exchange(s, &request, &mut buf).await,
            Conn::Tls(s) => exchange(s.as_mut(), &request, &mut buf).await,
        };
        match answered {
            Ok((status, keep)) => {
                let us = sent.elapsed().as_micros();
                tally
                    .latencies_us
                    .push(u32::try_from(us).unwrap_or(u32::MAX));
                if !(200..300).contains(&status) {
                    tally.non2xx += 1;
                }
                if keep {
                    conn = Some(c);
                }
            }
            Err(_) => {
                tally.errors += 1;
                buf.clear();
            }
        }
    }
    tally
}

/// Writes the request and reads one response (`Content-Length` framing, which every server
/// here answers with). Returns its status and whether the connection may be kept.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> io::Result<(u16, bool)> {
    stream.write_all(request).await?;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) = response
            .parse(buf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
        {
            let status = response.code.unwrap_or(0);
            let mut length = None;
            let mut keep = true;
            for h in response.headers.iter() {
                if h.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok());
                } else if h.name.eq_ignore_ascii_case("connection") {
                    keep &= !h.value.eq_ignore_ascii_case(b"close");
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(io::Error::other("chunked responses are not read here"));
                }
            }
            let length = length.ok_or_else(|| io::Error::other("no Content-Length"))?;
            let total = head_len + length;
            while buf.len() < total {
                read_more(stream, buf).await?;
            }
            buf.drain(..total);
            return Ok((status, keep));
        }
        read_more(stream, buf).await?;
    }
}

async fn read_more<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    if stream.read_buf(buf).await? == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}
