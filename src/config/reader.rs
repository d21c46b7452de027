//! A strict reader over a parsed TOML table that collects every problem instead of stopping at
//! the first: wrong types, missing keys and unknown keys are all reported, each naming its full
//! key path (`accounts[1].credential.secret`).

use std::collections::BTreeSet;

use toml::{Table, Value};

/// The longest duration a config may give (876000h, 100 years): "never" in effect, and far
/// from where `Instant + d` would overflow and panic.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(100 * 365 * 86_400);

/// Errors and warnings found while reading a config.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

/// One problem, tied to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl Diagnostics {
    pub fn error(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Diagnostic {
            key: key.into(),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Diagnostic {
            key: key.into(),
            message: message.into(),
        });
    }
}

/// A view of one TOML table that remembers which keys were read.
pub struct Section<'a> {
    path: String,
    table: &'a Table,
    seen: BTreeSet<&'a str>,
}

impl<'a> Section<'a> {
    pub fn new(path: impl Into<String>, table: &'a Table) -> Self {
        Section {
            path: path.into(),
            table,
            seen: BTreeSet::new(),
        }
    }

    /// The full key path of `key` in this section.
    pub fn key(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn get(&mut self, key: &'a str) -> Option<&'a Value> {
        #[cfg(test)]
        queried::record(&self.key(key));
        let value = self.table.get(key);
        if value.is_some() {
            self.seen.insert(key);
        }
        value
    }

    fn typed<T>(
        &mut self,
        d: &mut Diagnostics,
        key: &'a str,
        expected: &str,
        f: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Option<T> {
        let value = self.get(key)?;
        let out = f(value);
        if out.is_none() {
            d.error(
                self.key(key),
                format!("expected {expected}, found {}", describe(value)),
            );
        }
        out
    }

    pub fn string(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<&'a str> {
        self.typed(d, key, "a string", Value::as_str)
    }

    pub fn boolean(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<bool> {
        self.typed(d, key, "true or false", Value::as_bool)
    }

    pub fn integer(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<i64> {
        self.typed(d, key, "an integer", Value::as_integer)
    }

    /// A positive duration written as a string: `"250ms"`, `"5s"`, `"2m"`, `"1h"`; at most
    /// [`MAX_DURATION`], so that a deadline built from it (`Instant + d`) cannot overflow.
    pub fn duration(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<std::time::Duration> {
        let v = self.string(d, key)?;
        match super::parse_duration(v) {
            Some(dur) if dur > MAX_DURATION => {
                d.error(
                    self.key(key),
                    format!(
                        "{v:?} is more than 876000h (100 years), the longest duration accepted"
                    ),
                );
                None
            }
            Some(dur) if !dur.is_zero() => Some(dur),
            _ => {
                d.error(
                    self.key(key),
                    format!(
                        "expected a positive duration such as \"5s\" or \"250ms\", found {v:?}"
                    ),
                );
                None
            }
        }
    }

    /// A non-negative integer.
    pub fn count(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<u64> {
        let n = self.integer(d, key)?;
        match u64::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                d.error(self.key(key), "must not be negative");
                None
            }
        }
    }

    /// A size in bytes: an integer, or a string such as `"64KiB"` or `"1MiB"`.
    pub fn size(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<u64> {
        let value = self.get(key)?;
        if value.is_integer() {
            return self.count(d, key);
        }
        let parsed = value.as_str().and_then(super::parse_size);
        if parsed.is_none() {
            let found = value
                .as_str()
                .map_or_else(|| describe(value).to_string(), |s| format!("{s:?}"));
            d.error(
                self.key(key),
                format!(
                    "expected a size such as \"64KiB\", \"1MiB\" or a number of bytes, found {found}"
                ),
            );
        }
        parsed
    }

    pub fn table(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<Section<'a>> {
        let path = self.key(key);
        self.typed(d, key, "a table", Value::as_table)
            .map(|t| Section::new(path, t))
    }

    /// An array of strings; each bad element is reported on its own.
    pub fn strings(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<Vec<&'a str>> {
        let path = self.key(key);
        let array = self.typed(d, key, "an array of strings", Value::as_array)?;
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            match v.as_str() {
                Some(s) => out.push(s),
                None => d.error(
                    format!("{path}[{i}]"),
                    format!("expected a string, found {}", describe(v)),
                ),
            }
        }
        Some(out)
    }

    /// An array of tables (`[[accounts]]`).
    pub fn tables(&mut self, d: &mut Diagnostics, key: &'a str) -> Option<Vec<Section<'a>>> {
        let path = self.key(key);
        let array = self.typed(d, key, "an array of tables", Value::as_array)?;
        let mut out = Vec::with_capacity(array.len());
        for (i, v) in array.iter().enumerate() {
            match v.as_table() {
                Some(t) => out.push(Section::new(format!("{path}[{i}]"), t)),
                None => d.error(
                    format!("{path}[{i}]"),
                    format!("expected a table, found {}", describe(v)),
                ),
            }
        }
        Some(out)
    }

    /// [`Section::finish`] for a section held by reference.
    pub fn finish_ref(&self, d: &mut Diagnostics) {
        for key in self.table.keys() {
            if !self.seen.contains(key.as_str()) {
                d.error(self.key(key), "unknown key");
            }
        }
    }

    /// Reports every key that nothing read. Call after reading the section.
    pub fn finish(self, d: &mut Diagnostics) {
        for key in self.table.keys() {
            if !self.seen.contains(key.as_str()) {
                d.error(self.key(key), "unknown key");
            }
        }
    }
}

/// A short description of a value's type for error messages.
pub fn describe(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Every key the parser asks for, present or not: the test that the example config shows
/// every key reads it.
#[cfg(test)]
pub(crate) mod queried {
    use std::cell::RefCell;
    use std::collections::BTreeSet;

    thread_local! {
        static KEYS: RefCell<Option<BTreeSet<String>>> = const { RefCell::new(None) };
    }

    pub(crate) fn record(key: &str) {
        KEYS.with(|k| {
            if let Some(keys) = k.borrow_mut().as_mut() {
                keys.insert(key.to_string());
            }
        });
    }

    /// The keys `f` asked for, by full path (`accounts[0].credential.type`).
    pub(crate) fn during(f: impl FnOnce()) -> BTreeSet<String> {
        KEYS.with(|k| *k.borrow_mut() = Some(BTreeSet::new()));
        f();
        KEYS.with(|k| k.borrow_mut().take().unwrap_or_default())
    }
}
