//! The settings types: what each table of the config file means once it has been read, with
//! the defaults that apply when a key is absent. Plain data; [`super::parse`] fills them in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::Uri;

use super::secret::SecretSource;

/// `listen.unix` and `listen.unix_mode`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    pub path: PathBuf,
    /// File mode of the socket, e.g. `0o660`.
    pub mode: u32,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// From request received to response head sent, everything included.
    pub request_timeout: Duration,
    /// A client must send its complete request head within this.
    pub header_read_timeout: Duration,
    /// Larger request bodies get 413 and never reach Twilio.
    pub max_request_body: u64,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Requests handled at once; beyond it, 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// On SIGTERM/SIGINT, in-flight requests get this long to finish.
    pub drain_timeout: Duration,
    /// A connection with nothing in flight for this long is closed (HTTP/2: GOAWAY).
    /// HTTP/1.1 connections are closed sooner, at `header_read_timeout` without a request.
    pub idle_timeout: Duration,
    /// Open app connections per listener (the TCP and unix proxy listeners share one count,
    /// the webhook listener has its own); beyond it a new connection is closed at once.
    /// `None`: a quarter of the file descriptors left after the admin's reserve.
    pub max_connections: Option<usize>,
    /// Open admin connections, kept apart so probes and scrapes get through a flood.
    pub max_admin_connections: usize,
    /// A connection whose peer has read nothing of what the sidecar writes for this long is
    /// closed: an app that stops reading cannot pin a response in memory.
    pub write_timeout: Duration,
    /// Bytes of list pages held at once for paging-link rewriting, across all requests;
    /// a page that would go past it is answered 503 (79431).
    pub max_rewrite_buffer: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            max_request_body: 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_concurrent_requests: 1024,
            drain_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            max_admin_connections: 32,
            write_timeout: Duration::from_secs(30),
            max_rewrite_buffer: 32 * 1024 * 1024,
        }
    }
}

/// `[reload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReloadConfig {
    /// Reload when the config file or a file it references changes.
    pub watch: bool,
    /// Quiet period after the last change before reloading, so a burst of writes (an editor's
    /// temp file and rename, Kubernetes' `..data` swap) is one reload.
    pub debounce: Duration,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: true,
            debounce: Duration::from_millis(250),
        }
    }
}

/// `[upstream]`.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub default_host: String,
    pub allowed_hosts: Vec<String>,
    /// Send every upstream connection here instead of resolving the Twilio host; TLS still
    /// verifies the Twilio name. For tests and `dev`.
    pub connect_to: Option<SocketAddr>,
    /// Extra trusted CA certificates (PEM), added to the webpki roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Requests in flight on one HTTP/2 connection before the pool opens another to the host.
    pub http2_max_streams: usize,
    /// How long a request waits for a slot under its account's `max_concurrent`.
    pub queue_timeout: Duration,
    /// Requests that may wait for a slot, per account; beyond it, 503 at once.
    pub max_queued: usize,
    /// Times a request Twilio answered 429 is sent again (it was never processed).
    pub retry_429: u32,
    /// Request headers forwarded to Twilio besides the ones its APIs use.
    pub forward_headers: Vec<http::HeaderName>,
}

impl UpstreamConfig {
    /// True when `other` differs only in what does not touch connections (queueing and
    /// retries), so the same client and pools can serve it.
    pub fn same_connections(&self, other: &UpstreamConfig) -> bool {
        let mut other = other.clone();
        other.queue_timeout = self.queue_timeout;
        other.max_queued = self.max_queued;
        other.retry_429 = self.retry_429;
        other.forward_headers.clone_from(&self.forward_headers);
        *self == other
    }
}

/// `[[accounts]]`.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub sid: String,
    pub default: bool,
    pub credential: CredentialConfig,
    /// `webhook_token`: the Auth Token (or webhook SharedKey secret) Twilio signs this
    /// account's webhooks with; two while rotating. Empty: webhooks for it are refused.
    pub webhook_tokens: Vec<SecretSource>,
    /// `pkcv`: Public Key Client Validation, every request signed with this key.
    pub pkcv: Option<PkcvConfig>,
    /// `max_concurrent`: requests to Twilio in flight for this account at once (Twilio's
    /// own concurrency limit, say); more wait in FIFO order. `None`: no limit.
    pub max_concurrent: Option<usize>,
}

/// `pkcv = { credential_sid, private_key }`: the public key credential registered with
/// Twilio (`CR…`) and the RSA 2048 private key whose public half it holds.
#[derive(Debug, Clone)]
pub struct PkcvConfig {
    pub credential_sid: String,
    pub private_key: SecretSource,
}

/// At most this many webhook tokens per account: the old and the new during a rotation.
pub const MAX_WEBHOOK_TOKENS: usize = 2;

/// `[webhooks]`: the listener Twilio's webhooks arrive on, verified and forwarded to the app.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhooksConfig {
    /// Where the ingress sends Twilio's requests.
    pub listen: SocketAddr,
    /// The app: `http://host:port`, usually on loopback.
    pub forward_to: Uri,
    /// What Twilio calls, `scheme://host[:port]`; the signed URL is this followed by the
    /// request's path and query.
    pub public_url: PublicUrl,
    /// Larger bodies get 413 and are never forwarded.
    pub max_body: u64,
    /// How long the app may take to answer (Twilio itself gives up after 15 s).
    pub timeout: Duration,
    /// Webhooks handled at once; beyond it, 503 at once.
    pub max_concurrent: usize,
}

/// `webhooks.public_url`, in the two spellings the SDKs' validators accept: Twilio signs
/// with or without the port, inconsistently. A path is a prefix the ingress strips before the
/// request reaches the sidecar (`https://example.com/twilio` when `/twilio/sms` arrives as
/// `/sms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// As configured, without a trailing slash.
    pub as_configured: String,
    /// `scheme://host[/prefix]`, no port.
    pub without_port: String,
    /// `scheme://host:port[/prefix]`, the default port (443, 80) when none is configured.
    pub with_port: String,
}

impl PublicUrl {
    /// Parses `scheme://host[:port][/prefix]` (http or https; no query, fragment or
    /// userinfo).
    pub fn parse(s: &str) -> Result<PublicUrl, String> {
        let uri: Uri = s
            .parse()
            .map_err(|e: http::uri::InvalidUri| format!("{s:?} is not a URL: {e}"))?;
        let scheme = match uri.scheme_str() {
            Some(scheme @ ("http" | "https")) => scheme,
            _ => return Err(format!("{s:?} must start with https:// (or http://)")),
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("{s:?} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("{s:?} must not contain userinfo"));
        }
        if uri.query().is_some() || s.contains('#') {
            return Err(format!(
                "{s:?} must not have a query: the query Twilio signs comes from each request"
            ));
        }
        let prefix = uri.path().trim_end_matches('/');
        let host = authority.host();
        let port = authority
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        Ok(PublicUrl {
            as_configured: format!("{scheme}://{authority}{prefix}"),
            without_port: format!("{scheme}://{host}{prefix}"),
            with_port: format!("{scheme}://{host}:{port}{prefix}"),
        })
    }
}

/// Checks `webhooks.forward_to`: `http://host:port`, no path.
pub fn parse_forward_to(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e: http::uri::InvalidUri| format!("{s:?} is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(format!(
            "{s:?} must be http://host:port: the app listens beside the sidecar, in plain HTTP"
        ));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "{s:?} must not have a path: each webhook keeps the path Twilio called"
        ));
    }
    Ok(uri)
}

/// `credential = { type = … }`.
#[derive(Debug, Clone)]
pub enum CredentialConfig {
    /// Basic `SK…:secret`, the production choice.
    ApiKey {
        key_sid: SecretSource,
        secret: SecretSource,
    },
    /// Basic `AC…:token`: full account access, for test and development only.
    AuthToken { token: SecretSource },
    /// OAuth2 client_credentials: bearer tokens fetched, cached and refreshed by the sidecar.
    OAuth2 {
        client_id: SecretSource,
        client_secret: SecretSource,
        token_url: String,
    },
}

impl CredentialConfig {
    /// The `type` value.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::ApiKey { .. } => "api_key",
            CredentialConfig::AuthToken { .. } => "auth_token",
            CredentialConfig::OAuth2 { .. } => "oauth2",
        }
    }

    /// Every source, with its key name.
    pub fn sources(&self) -> Vec<(&'static str, &SecretSource)> {
        match self {
            CredentialConfig::ApiKey { key_sid, secret } => {
                vec![("key_sid", key_sid), ("secret", secret)]
            }
            CredentialConfig::AuthToken { token } => vec![("token", token)],
            CredentialConfig::OAuth2 {
                client_id,
                client_secret,
                ..
            } => vec![("client_id", client_id), ("client_secret", client_secret)],
        }
    }
}

/// One policy rule as written: the `[METHODS] [HOST]PATTERN` text and, in the table form
/// `{ rule = "…", params = { To = ["+1*"] } }`, conditions on its parameters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(from = "RuleForm")]
pub struct RuleSpec {
    pub rule: String,
    /// Parameter name and the globs (`*`: any run of characters) its every value must match,
    /// in the order written.
    pub params: Vec<(String, Vec<String>)>,
}

impl From<&str> for RuleSpec {
    fn from(rule: &str) -> RuleSpec {
        RuleSpec {
            rule: rule.to_string(),
            params: Vec::new(),
        }
    }
}

/// The two ways a rule is written in a policy document (JSON).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum RuleForm {
    Text(String),
    Table(RuleTable),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    rule: String,
    #[serde(default)]
    params: std::collections::BTreeMap<String, Vec<String>>,
}

impl From<RuleForm> for RuleSpec {
    fn from(form: RuleForm) -> RuleSpec {
        match form {
            RuleForm::Text(rule) => RuleSpec {
                rule,
                params: Vec::new(),
            },
            RuleForm::Table(t) => RuleSpec {
                rule: t.rule,
                params: t.params.into_iter().collect(),
            },
        }
    }
}

/// `[policy]`.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub allow: Vec<RuleSpec>,
    pub deny: Vec<RuleSpec>,
    /// Rules with parameter conditions read bodies up to this size; a larger one does not
    /// satisfy an allow rule's conditions (and does satisfy a deny rule's).
    pub max_inspected_body: u64,
    /// JSON documents `{"allow": [...], "deny": [...]}` whose rules are added.
    pub files: Vec<PathBuf>,
    /// With `[[clients]]`: serve requests without client credentials under these rules
    /// (otherwise they get 401).
    pub anonymous: bool,
}

/// `[access_tokens]` (or a client's `access_tokens`): which Access Tokens the sidecar mints for
/// browser and mobile SDKs, signed with an account's API key.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessTokenPolicy {
    /// The account whose API key signs; `None`: the default account.
    pub account: Option<String>,
    /// The longest lifetime granted (at most 24 h, Twilio's maximum).
    pub max_ttl: Duration,
    /// Globs (`*`: any run of characters) an identity must match.
    pub identities: Vec<String>,
    pub voice: Option<VoiceTokenPolicy>,
    /// Video: room name globs.
    pub video: Option<Vec<String>>,
    /// Conversations (chat): service SIDs.
    pub chat: Option<Vec<String>>,
    /// Sync: service SIDs.
    pub sync: Option<Vec<String>>,
}

/// The voice part of an [`AccessTokenPolicy`].
#[derive(Debug, Clone, PartialEq)]
pub struct VoiceTokenPolicy {
    /// TwiML application SIDs outgoing calls may use.
    pub outgoing_application_sids: Vec<String>,
    /// Whether tokens may allow incoming calls.
    pub incoming: bool,
}

/// Twilio's longest Access Token lifetime.
pub const MAX_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(24 * 3600);

/// `[intercept]`: transparent mode's local CA.
#[derive(Debug, Clone)]
pub struct InterceptConfig {
    /// The CA certificate (PEM), which apps trust.
    pub ca_cert: PathBuf,
    /// Its private key.
    pub ca_key: SecretSource,
}

/// `[[clients]]`: an app with a local key of its own and a policy of its own.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`: the Basic username the app presents, a metric label.
    pub id: String,
    /// The local secret, as SHA-256 hashes (1–4, so a rotation overlaps) or a source to read
    /// and hash when the state is built.
    pub secret: ClientSecret,
    /// The accounts this client may use; `None`: all.
    pub accounts: Option<Vec<String>>,
    /// Overrides `policy.mode` for this client.
    pub mode: Option<Mode>,
    pub allow: Vec<RuleSpec>,
    pub deny: Vec<RuleSpec>,
    pub files: Vec<PathBuf>,
    /// Replaces `[access_tokens]` for this client's token requests.
    pub access_tokens: Option<AccessTokenPolicy>,
}

/// How a client's local secret is given.
#[derive(Debug, Clone)]
pub enum ClientSecret {
    /// `secret_sha256`: the hashes only, so the config file holds nothing that authenticates.
    Hashes(Vec<[u8; 32]>),
    /// `secret`: the secret itself, read from its source and hashed on load.
    Source(SecretSource),
}

/// At most this many hashes per client: enough to overlap a rotation, few enough to check
/// them all on every request.
pub const MAX_CLIENT_HASHES: usize = 4;

/// True for a client id: `[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`, and not shaped like a Twilio SID
/// (two letters and 32 hex digits), which is what an SDK given Twilio credentials sends.
pub fn is_client_id(id: &str) -> bool {
    let b = id.as_bytes();
    let sid_shaped = b.len() == 34
        && b[..2].iter().all(u8::is_ascii_alphabetic)
        && b[2..].iter().all(u8::is_ascii_hexdigit);
    !b.is_empty()
        && b.len() <= 64
        && !sid_shaped
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// 64 hex digits → 32 bytes.
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `enforce` refuses denied requests; `audit` forwards them and counts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Enforce,
    Audit,
}

/// Tunables, from the `[oauth]` config table.
#[derive(Debug, Clone, PartialEq)]
pub struct OAuthSettings {
    /// Limit on one token request.
    pub token_timeout: Duration,
    /// How long a request without a usable token waits for the fetch in flight.
    pub wait_for_token: Duration,
    /// Bodies up to this size are buffered so a request can be replayed after a 401.
    pub replay_body_limit: u64,
    /// A token is not attached within this margin of its expiry.
    pub expiry_margin: Duration,
    /// First retry delay ceiling after a failed fetch; doubles per failure.
    pub backoff_base: Duration,
    /// Largest retry delay ceiling.
    pub backoff_max: Duration,
    /// Lifetime assumed when neither `expires_in` nor a JWT `exp` is plausible.
    pub fallback_lifetime: Duration,
    /// After a 401 has dropped a token, further 401s drop none for this long: a path Twilio
    /// always answers 401 cannot turn requests into token fetches.
    pub min_refetch_interval: Duration,
}

impl Default for OAuthSettings {
    fn default() -> Self {
        OAuthSettings {
            token_timeout: Duration::from_secs(10),
            wait_for_token: Duration::from_secs(2),
            replay_body_limit: 64 * 1024,
            expiry_margin: Duration::from_secs(30),
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            fallback_lifetime: Duration::from_secs(300),
            min_refetch_interval: Duration::from_secs(10),
        }
    }
}

/// Twilio's token endpoint.
pub const TWILIO_TOKEN_URL: &str = "https://oauth.twilio.com/v2/token";
/// Why a `token_url` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenUrlError {
    #[error("{url:?} is not a URL: {reason}")]
    NotAUrl { url: String, reason: String },
    #[error("{0:?} must be an https:// URL (tokens are only fetched over verified TLS)")]
    NotHttps(String),
}

/// Checks a token URL: https, with a host.
pub fn parse_token_url(url: &str) -> Result<Uri, TokenUrlError> {
    let uri: Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| TokenUrlError::NotAUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(TokenUrlError::NotHttps(url.to_string()));
    }
    Ok(uri)
}

/// `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

/// `"512"`, `"512B"`, `"64KiB"`, `"1MiB"`, `"1GiB"`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

/// True for `AC` or `SK` followed by 32 hex digits.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}
