//! Transparent mode through the real binary: `ca init`, curl with `-x` (CONNECT, the local CA,
//! no code change), refused CONNECT targets that dial nothing, the host pinned inside a tunnel,
//! client credentials on the CONNECT, and the CA's name constraints as openssl and Python's
//! strict verification see them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// `ca init` into `dir`; returns (ca.pem, ca.key).
fn ca_init(dir: &Path) -> (PathBuf, PathBuf) {
    let out = sidecar_command()
        .args(["ca", "init", "--dir"])
        .arg(dir.join("ca"))
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("ca/ca.pem"), dir.join("ca/ca.key"))
}

fn intercepting(ctx: &Ctx, extra: &str) -> String {
    let (cert, key) = ca_init(&ctx.dir);
    format!(
        "{}\n[intercept]\nca_cert = {:?}\nca_key = {{ file = {:?} }}\n{extra}",
        standard_config(ctx, "", POLICY),
        cert,
        key
    )
}

/// curl through the sidecar as its HTTPS proxy: (HTTP status, body).
fn curl(proxy: std::net::SocketAddr, ca: &Path, args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10"])
        .arg("-x")
        .arg(format!("http://{proxy}"))
        .arg("--cacert")
        .arg(ca)
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        body.to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_a_tunnel_is_checked_and_credentialed_like_any_request() {
    let h = Harness::start_with(|ctx| intercepting(ctx, "")).await;
    let ca = h.dir.path().join("ca/ca.pem");
    let proxy = h.proxy;
    let url = format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json");
    let (status, body) = tokio::task::spawn_blocking({
        let (ca, url) = (ca.clone(), url.clone());
        move || curl(proxy, &ca, &["-d", "Body=hi", "-u", "ACapp:dummy", &url])
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.last_authorization(), vec![expected_authorization()]);
    // Denied inside the tunnel exactly as outside it.
    let (status, body) = tokio::task::spawn_blocking({
        let (ca, url) = (ca.clone(), url.replace("Messages", "Keys"));
        move || curl(proxy, &ca, &[&url])
    })
    .await
    .unwrap();
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("70051"), "{body}");
    // Another host named inside a tunnel to api.twilio.com: refused, not re-routed.
    let (status, body) = tokio::task::spawn_blocking({
        let ca = ca.clone();
        let url = url.clone();
        move || curl(proxy, &ca, &["-H", "Host: verify.twilio.com", &url])
    })
    .await
    .unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("79401"), "{body}");
    // Another product over its own tunnel.
    let (status, body) = tokio::task::spawn_blocking({
        let ca = ca.clone();
        move || {
            curl(
                proxy,
                &ca,
                &[
                    "-d",
                    "To=x",
                    "https://verify.twilio.com/v2/Services/VA1/Verifications",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");

    let m = h.metrics().await;
    assert!(
        m.contains(r#"twilio_sidecar_tunnels_total{result="opened"} 4"#),
        "{m}"
    );
    // One leaf per host, reused by later tunnels to it.
    assert!(
        m.contains("twilio_sidecar_tunnel_leaf_certificates_issued_total 2"),
        "{m}"
    );
}

#[tokio::test]
async fn connect_to_anything_but_an_allowed_twilio_host_on_443_dials_nothing() {
    let h = Harness::start_with(|ctx| intercepting(ctx, "")).await;
    let before = h.stand_in.connections();
    for target in [
        "evil.example:443",
        "api.twilio.com:8443",
        "127.0.0.1:443",
        "[::1]:443",
        "api.twilio.com.evil.example:443",
        "user@api.twilio.com:443",
        "monitor.twilio.com.:443",
    ] {
        let resp = h
            .raw(&format!(
                "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n"
            ))
            .await;
        assert!(
            resp.status == 403 || resp.status == 400,
            "{target}: {}",
            resp.status
        );
        let code = resp.json()["code"].as_u64().unwrap();
        assert!(code == 79403 || code == 79401, "{target}: {code}");
    }
    // No port: refused too.
    let resp = h
        .raw("CONNECT api.twilio.com HTTP/1.1\r\nHost: api.twilio.com\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(resp.twilio_error(403), 79403);
    assert_eq!(
        h.stand_in.connections(),
        before,
        "a refused CONNECT dialled out"
    );
    let m = h.metrics().await;
    assert!(
        m.contains(r#"twilio_sidecar_tunnels_total{result="refused_target"}"#),
        "{m}"
    );
}

#[tokio::test]
async fn without_intercept_connect_is_not_served() {
    let h = Harness::start().await;
    let resp = h
        .raw("CONNECT api.twilio.com:443 HTTP/1.1\r\nHost: api.twilio.com:443\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(resp.twilio_error(405), 79405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_on_the_connect_hold_for_the_tunnel() {
    const LOCAL: &str = "tunnel-client-local-secret-0123456789abcd";
    let hash: String = twilio_sidecar::gate::clients::secret_hash(LOCAL.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let h = Harness::start_with(|ctx| {
        intercepting(
            ctx,
            &format!(
                "[[clients]]\nid = \"billing-api\"\nsecret_sha256 = [\"{hash}\"]\nallow = [\"POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json\"]\n"
            ),
        )
    })
    .await;
    let ca = h.dir.path().join("ca/ca.pem");
    let proxy = h.proxy;
    let url = format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json");
    let run = move |args: Vec<String>| {
        let ca = ca.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(proxy, &ca, &args)
        })
    };
    let (status, body) = run(vec![
        "--proxy-user".into(),
        format!("billing-api:{LOCAL}"),
        "-u".into(),
        format!("{SID}:sdk-dummy"),
        "-d".into(),
        "Body=hi".into(),
        url.clone(),
    ])
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(h.last_authorization(), vec![expected_authorization()]);
    // Without them: the proxy asks for them (407), and nothing is tunnelled.
    let resp = h
        .raw("CONNECT api.twilio.com:443 HTTP/1.1\r\nHost: api.twilio.com:443\r\nConnection: close\r\n\r\n")
        .await;
    assert_eq!(resp.twilio_error(407), 20003);
    assert_eq!(
        resp.header("proxy-authenticate"),
        Some(r#"Basic realm="twilio-sidecar""#)
    );
    let (status, _) = run(vec!["-d".into(), "Body=hi".into(), url.clone()])
        .await
        .unwrap();
    assert_ne!(status, 200);
}

/// The CA and the leaves it issues pass `openssl verify -x509_strict`; a leaf for a name
/// outside twilio.com, signed with the CA's own key, is rejected by openssl and by Python's
/// ssl with strict verification: the name constraint holds even if the key is stolen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ca_is_strict_and_name_constrained() {
    let h = Harness::start_with(|ctx| intercepting(ctx, "")).await;
    let dir = h.dir.path();
    let ca = dir.join("ca/ca.pem");
    // The leaf the sidecar serves for api.twilio.com, as a client sees it.
    let proxy = h.proxy;
    let out = tokio::task::spawn_blocking(move || {
        Command::new("openssl")
            .args(["s_client", "-connect", "api.twilio.com:443", "-proxy"])
            .arg(proxy.to_string())
            .args(["-servername", "api.twilio.com", "-showcerts"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    let leaf = write(dir, "leaf.pem", &format!("{}\n", &text[start..end]));
    for cert in [&ca, &leaf] {
        let out = Command::new("openssl")
            .args(["verify", "-x509_strict", "-CAfile"])
            .arg(&ca)
            .arg(cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            cert.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let x509 = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&leaf)
        .output()
        .unwrap();
    let x509 = String::from_utf8_lossy(&x509.stdout);
    assert!(x509.contains("DNS:api.twilio.com"), "{x509}");
    assert!(x509.contains("TLS Web Server Authentication"), "{x509}");
    assert!(x509.contains("Authority Key Identifier"), "{x509}");

    // A certificate for another name, signed with the CA's key (as a thief would).
    let key_pem = std::fs::read_to_string(dir.join("ca/ca.key")).unwrap();
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let evil_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example.com".to_string()]).unwrap();
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let evil = params.signed_by(&evil_key, &issuer).unwrap();
    let evil_pem = write(dir, "evil.pem", &evil.pem());
    let evil_key_pem = write(dir, "evil.key", &evil_key.serialize_pem());
    let out = Command::new("openssl")
        .args(["verify", "-x509_strict", "-CAfile"])
        .arg(&ca)
        .arg(&evil_pem)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "openssl accepted a name outside the constraint: {said}"
    );
    assert!(said.contains("permitted subtree"), "{said}");
    // Python's ssl, strict as 3.13 is by default, in a real handshake.
    let script = r#"
import socket, ssl, sys, threading
ca, cert, key = sys.argv[1:4]
srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); srv.load_cert_chain(cert, key)
cli = ssl.create_default_context(cafile=ca)
cli.verify_flags |= ssl.VERIFY_X509_STRICT
a, b = socket.socketpair()
def serve():
    try: srv.wrap_socket(a, server_side=True).close()
    except Exception: pass
threading.Thread(target=serve, daemon=True).start()
try:
    cli.wrap_socket(b, server_hostname=sys.argv[4]).close(); print("accepted")
except ssl.SSLCertVerificationError as e:
    print("rejected:", e.verify_message)
"#;
    let python = |cert: &Path, key: &Path, name: &str| {
        let out = Command::new(sdk_python())
            .args(["-c", script])
            .arg(&ca)
            .arg(cert)
            .arg(key)
            .arg(name)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let said = python(&evil_pem, &evil_key_pem, "evil.example.com");
    assert!(said.starts_with("rejected"), "{said}");
    // ...while a leaf for a Twilio name from the same key is accepted by the same code.
    let mut params = rcgen::CertificateParams::new(vec!["api.twilio.com".to_string()]).unwrap();
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let good = params.signed_by(&evil_key, &issuer).unwrap();
    let good_pem = write(dir, "good.pem", &good.pem());
    let said = python(&good_pem, &evil_key_pem, "api.twilio.com");
    assert_eq!(said.trim(), "accepted");
}

#[test]
fn ca_init_refuses_to_overwrite_and_keeps_its_key_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca_init(dir.path());
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(&cert).unwrap().permissions().mode() & 0o077,
        0o044 & 0o077 & std::fs::metadata(&cert).unwrap().permissions().mode()
    );
    let before = std::fs::read(&key).unwrap();
    let out = sidecar_command()
        .args(["ca", "init", "--dir"])
        .arg(dir.path().join("ca"))
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already exists")
            || String::from_utf8_lossy(&out.stderr).contains("already exists")
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
}
