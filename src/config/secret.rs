//! Where a secret (or an identifier that travels with one) comes from: `{ env = "NAME" }`,
//! `{ file = "PATH" }` or, discouraged, an inline string. Values are read into `secrecy`
//! wrappers so they never reach logs, `Debug` output or `/config`.

use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

use super::reader::{describe, Diagnostics, Section};

/// Why a secret could not be read. Messages name the source, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvNotSet(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read {}: {reason}", path.display())]
    Unreadable { path: PathBuf, reason: String },
    #[error("{0} is empty")]
    Empty(String),
}

/// A secret's source.
#[derive(Clone)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
    Inline(SecretString),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Env(name) => f.debug_tuple("Env").field(name).finish(),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
            SecretSource::Inline(_) => f.write_str("Inline([redacted])"),
        }
    }
}

impl SecretSource {
    /// Reads the value now. Surrounding whitespace (a file's trailing newline) is dropped; an
    /// empty value is an error, since it is always a mistake (or a file caught mid-write).
    pub fn read(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).map_err(|e| match e {
                std::env::VarError::NotPresent => SecretError::EnvNotSet(name.clone()),
                std::env::VarError::NotUnicode(_) => SecretError::EnvNotUnicode(name.clone()),
            })?,
            SecretSource::File(path) => {
                std::fs::read_to_string(path).map_err(|e| SecretError::Unreadable {
                    path: path.clone(),
                    reason: e.to_string(),
                })?
            }
            SecretSource::Inline(s) => s.expose_secret().to_string(),
        };
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(SecretError::Empty(self.origin()));
        }
        Ok(SecretString::from(trimmed.to_string()))
    }

    /// Where the value comes from, safe to print.
    pub fn origin(&self) -> String {
        match self {
            SecretSource::Env(name) => format!("environment variable {name}"),
            SecretSource::File(path) => format!("file {}", path.display()),
            SecretSource::Inline(_) => "the inline value".to_string(),
        }
    }

    /// The redacted form shown by `/config`.
    pub fn redacted(&self) -> serde_json::Value {
        match self {
            SecretSource::Env(name) => serde_json::json!({ "env": name }),
            SecretSource::File(path) => serde_json::json!({ "file": path }),
            SecretSource::Inline(_) => serde_json::json!("[inline, redacted]"),
        }
    }

    /// The file this source reads, for the reload watcher.
    pub fn file(&self) -> Option<&std::path::Path> {
        match self {
            SecretSource::File(p) => Some(p),
            _ => None,
        }
    }

    /// Reads `key` of `section` as a source. `secret` marks values that must not be inline
    /// (a warning), as opposed to identifiers such as a key SID.
    pub(crate) fn parse<'a>(
        section: &mut Section<'a>,
        d: &mut Diagnostics,
        key: &'a str,
        secret: bool,
        base: &std::path::Path,
    ) -> Option<SecretSource> {
        let full = section.key(key);
        let Some(value) = section.get(key) else {
            d.error(
                full,
                "missing (write { file = \"PATH\" } or { env = \"NAME\" })",
            );
            return None;
        };
        if let Some(s) = value.as_str() {
            if secret {
                d.warn(
                    full,
                    "an inline secret sits in the config file; prefer { file = \"PATH\" } or { env = \"NAME\" }",
                );
            }
            return Some(SecretSource::Inline(SecretString::from(s.to_string())));
        }
        let Some(table) = value.as_table() else {
            d.error(
                full,
                format!(
                    "expected {{ file = \"PATH\" }}, {{ env = \"NAME\" }} or a string, found {}",
                    describe(value)
                ),
            );
            return None;
        };
        let mut t = Section::new(full.clone(), table);
        let env = t.string(d, "env");
        let file = t.string(d, "file");
        t.finish(d);
        match (env, file) {
            (Some(name), None) if !name.is_empty() => Some(SecretSource::Env(name.to_string())),
            (None, Some(path)) if !path.is_empty() => Some(SecretSource::File(base.join(path))),
            (Some(_), Some(_)) => {
                d.error(full, "give either file or env, not both");
                None
            }
            _ => {
                d.error(full, "expected a non-empty file or env");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_inline_values() {
        let s = SecretSource::Inline(SecretString::from("hunter2".to_string()));
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!s.redacted().to_string().contains("hunter2"));
    }

    #[test]
    fn file_values_are_trimmed_and_empty_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("secret");
        std::fs::write(&p, "s3cr3t\n").unwrap();
        let v = SecretSource::File(p.clone()).read().unwrap();
        assert_eq!(v.expose_secret(), "s3cr3t");
        std::fs::write(&p, "\n").unwrap();
        assert!(SecretSource::File(p)
            .read()
            .unwrap_err()
            .to_string()
            .contains("empty"));
        assert!(SecretSource::File(dir.path().join("missing"))
            .read()
            .is_err());
    }
}
