//! The config file: TOML in, a typed [`Config`] out, with every problem reported at once.
//!
//! This module only reads and checks the file's own content; reading secrets, loading the CA
//! file and compiling the policy happen when a [`crate::control::state::State`] is built from it, so
//! that `validate`, startup and reload share one path. Relative paths are resolved against the
//! config file's directory.

pub mod hosts;
mod parse;
pub mod reader;
pub mod secret;
mod settings;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use parse::read_config;
use reader::{Diagnostic, Diagnostics};
pub use secret::{SecretError, SecretSource};
pub use settings::*;

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

/// The whole config.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it was read from, when it came from a file.
    pub path: Option<PathBuf>,
    pub listen: SocketAddr,
    /// `listen.unix`: also serve apps on this unix socket.
    pub unix: Option<UnixListen>,
    /// `listen.names`: host names apps reach the proxy by (a gateway's Service name), accepted
    /// in `Host` besides Twilio hosts, IP addresses and `localhost`.
    pub names: Vec<String>,
    /// `listen.workers`: threads serving the proxy listeners, one runtime each (default: one
    /// per CPU).
    pub workers: usize,
    pub admin: SocketAddr,
    /// `admin.error_docs_url`: where responses' `more_info` sends readers for the sidecar's
    /// error codes (`{url}/{code}`). Default: the admin listener's own `/errors` pages.
    pub error_docs_url: Option<String>,
    pub upstream: UpstreamConfig,
    pub accounts: Vec<AccountConfig>,
    pub policy: PolicyConfig,
    /// `[[clients]]`: per-app local keys and policies (empty: every caller is the same app).
    pub clients: Vec<ClientConfig>,
    /// `[intercept]`: transparent mode (CONNECT), when configured.
    pub intercept: Option<InterceptConfig>,
    /// `[webhooks]`: the inbound webhook listener, when configured.
    pub webhooks: Option<WebhooksConfig>,
    /// `[access_tokens]`: Access Tokens minted for anonymous callers (clients may have their
    /// own).
    pub access_tokens: Option<AccessTokenPolicy>,
    /// `[oauth]`: token cache tunables for oauth2 accounts.
    pub oauth: OAuthSettings,
    /// `[reload]`: file watching.
    pub reload: ReloadConfig,
    /// `[limits]`: bounds on what one request or client may take.
    pub limits: Limits,
}

/// A config that cannot be used, with every problem found.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<dev>` for built-in configs).
    pub file: String,
    pub problems: Vec<Diagnostic>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: error: {p}", self.file)?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// An error about the file as a whole.
    pub fn single(file: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.into(),
            problems: vec![Diagnostic {
                key: String::new(),
                message: message.into(),
            }],
        }
    }
}

/// Defaults, also used by `dev`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

impl Config {
    /// Reads and checks `path`. Warnings come back beside the config.
    pub fn load(path: &Path) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, base, &path.display().to_string())?;
        config.0.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses config text; `file` names it in messages, `base` resolves relative paths.
    pub fn parse(
        text: &str,
        base: &Path,
        file: &str,
    ) -> Result<(Config, Vec<Diagnostic>), ConfigError> {
        let (config, d) = Self::parse_best_effort(text, base, file)?;
        match config {
            Some(c) if d.errors.is_empty() => Ok((c, d.warnings)),
            _ => Err(ConfigError {
                file: file.to_string(),
                problems: d.errors,
            }),
        }
    }

    /// Like [`Config::parse`], but with errors it also returns the config as far as it could
    /// be read (entries with errors left out; `None` when a whole table is unusable), so
    /// `validate` can go on to check the rest — the policy rules above all — and report every
    /// problem at once. Such a config must never serve. Only invalid TOML is an `Err`.
    pub fn parse_best_effort(
        text: &str,
        base: &Path,
        file: &str,
    ) -> Result<(Option<Config>, Diagnostics), ConfigError> {
        // Only the message and position: toml's own Display quotes the offending line, which
        // could be an inline secret.
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" at line {line}, column {column}")
            });
            ConfigError::single(
                file,
                format!("invalid TOML{at}: {}", e.message().trim_end()),
            )
        })?;
        let mut d = Diagnostics::default();
        let config = read_config(&table, base, &mut d);
        Ok((config, d))
    }

    /// [`Config::parse_best_effort`] on a file.
    pub fn load_best_effort(path: &Path) -> Result<(Option<Config>, Diagnostics), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let (config, d) = Config::parse_best_effort(&text, base, &path.display().to_string())?;
        Ok((
            config.map(|mut c| {
                c.path = Some(path.to_path_buf());
                c
            }),
            d,
        ))
    }

    /// Every file whose change should trigger a reload: the config, secret and policy files.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.path.iter().cloned().collect();
        for account in &self.accounts {
            for (_, source) in account.credential.sources() {
                files.extend(source.file().map(Path::to_path_buf));
            }
            for source in &account.webhook_tokens {
                files.extend(source.file().map(Path::to_path_buf));
            }
            if let Some(pkcv) = &account.pkcv {
                files.extend(pkcv.private_key.file().map(Path::to_path_buf));
            }
        }
        files.extend(self.upstream.ca_file.iter().cloned());
        files.extend(self.policy.files.iter().cloned());
        if let Some(intercept) = &self.intercept {
            files.push(intercept.ca_cert.clone());
            files.extend(intercept.ca_key.file().map(Path::to_path_buf));
        }
        for client in &self.clients {
            if let ClientSecret::Source(source) = &client.secret {
                files.extend(source.file().map(Path::to_path_buf));
            }
            files.extend(client.files.iter().cloned());
        }
        files
    }
}
