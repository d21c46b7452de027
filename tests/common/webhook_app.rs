//! An app behind the webhook listener: plain HTTP/1.1 on `127.0.0.1:0`, recording every
//! request exactly as it arrived (raw head and body bytes) and answering with TwiML. A path
//! starting `/slow` answers after 3 s.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{http1_request, listeners_and_upstream, raw_request, Ctx, Harness, RawResponse};
use super::{SID, SID2, TOKEN2_ENV};

pub const TOKEN_A: &str = "webhook-auth-token-account-one-0001";
pub const TOKEN_A_NEXT: &str = "webhook-auth-token-account-one-0002";
pub const TOKEN_B: &str = "webhook-auth-token-account-two-0001";
/// What Twilio calls, in the configs below.
pub const PUBLIC: &str = "https://hooks.example.com";
pub const FORM: &str = "application/x-www-form-urlencoded";

/// Two accounts with webhook tokens (files `token-a`, `token-b`), and `[webhooks]` forwarding
/// to `app` under [`PUBLIC`], with `extra` keys.
pub fn webhook_config(ctx: &Ctx, app: SocketAddr, extra: &str) -> String {
    std::fs::write(ctx.dir.join("token-a"), format!("{TOKEN_A}\n")).unwrap();
    std::fs::write(ctx.dir.join("token-b"), TOKEN_B).unwrap();
    format!(
        r#"
{head}

[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "key_sid" }}, secret = {{ file = "secret" }} }}
webhook_token = {{ file = "token-a" }}

[[accounts]]
sid = "{SID2}"
credential = {{ type = "auth_token", token = {{ env = "{TOKEN2_ENV}" }} }}
webhook_token = {{ file = "token-b" }}

[policy]
allow = ["POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json"]

[webhooks]
listen = "127.0.0.1:0"
forward_to = "http://{app}"
public_url = "{PUBLIC}"
{extra}
"#,
        head = listeners_and_upstream(ctx)
    )
}

/// A request to the webhook listener, as an ingress would pass Twilio's on.
pub async fn deliver(
    h: &Harness,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let bytes = http1_request(method, target, "hooks.example.com", headers, body);
    raw_request(h.webhooks.expect("a webhook listener"), &bytes).await
}

/// A signed form post to the webhook listener.
pub async fn deliver_form(h: &Harness, target: &str, signature: &str, body: &str) -> RawResponse {
    deliver(
        h,
        "POST",
        target,
        &[("Content-Type", FORM), ("X-Twilio-Signature", signature)],
        body.as_bytes(),
    )
    .await
}

/// What the app answers: Twilio must get exactly this back.
pub const TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Message>Thanks &amp; bye</Message></Response>";

/// One request as the app read it off the socket.
#[derive(Debug, Clone)]
pub struct AppRequest {
    pub head: String,
    pub body: Vec<u8>,
}

impl AppRequest {
    /// The request line.
    pub fn line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// Every value of header `name`.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
            .collect()
    }
}

/// The running app.
pub struct WebhookApp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<AppRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebhookApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookApp {
    pub async fn start() -> WebhookApp {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// On a given address (to bring an app back where it was).
    pub async fn start_on(addr: SocketAddr) -> WebhookApp {
        let listener = TcpListener::bind(addr).await.expect("bind app");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let sink = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let sink = sink.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        let length: usize = head
                            .lines()
                            .filter_map(|l| l.split_once(':'))
                            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.trim().parse().ok())
                            .unwrap_or(0);
                        while buf.len() < end + 4 + length {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body = buf[end + 4..end + 4 + length].to_vec();
                        buf.drain(..end + 4 + length);
                        let slow = head
                            .split(' ')
                            .nth(1)
                            .is_some_and(|p| p.starts_with("/slow"));
                        sink.lock().unwrap().push(AppRequest { head, body });
                        if slow {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nX-App: yes\r\nContent-Length: {}\r\n\r\n{TWIML}",
                            TWIML.len()
                        );
                        if stream.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WebhookApp {
            addr,
            requests,
            task,
        }
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<AppRequest> {
        self.requests.lock().unwrap().clone()
    }
}
