//! twilio-sidecar: an outbound authenticating sidecar proxy for Twilio's REST APIs.
//!
//! Apps send plain, unauthenticated HTTP to it on loopback. It works out which Twilio host the
//! request is for, checks it against a least-privilege policy written like Twilio restricted-key
//! permissions (default deny), strips whatever credentials the app sent, attaches the account's
//! credential and forwards over verified TLS. The app never holds a Twilio secret.
//!
//! # Layout
//!
//! One crate whose folders follow the request one way, `proxy → gate / credentials /
//! upstream → config`; `tests/layout.rs` fails on an import cycle between them.
//!
//! - [`proxy`]: the data path — [`proxy::server`] (accept loop: bound listener in, shutdown
//!   future, drain), [`proxy::connection_guard`] (connection caps and timeouts), the request
//!   phases as named functions, and [`proxy::error`], the one
//!   place errors become responses.
//! - [`gate`]: phases 1–4 as pure functions, shared with `check`: [`gate::route`] (which
//!   Twilio host; never an open proxy), [`gate::request_path`] (canonical or refused),
//!   [`gate::policy`] (rule language, matcher, lint), [`gate::catalogue`] (Twilio's operations).
//! - [`credentials`]: what each account attaches — Basic headers, and the OAuth2 token cache
//!   ([`credentials::oauth`]) with its injected fetcher and clock.
//! - [`upstream`]: verified TLS to Twilio ([`upstream::tls`]), bodies ([`upstream::body`]),
//!   the per-thread connection pool ([`upstream::pool`]) and the HTTP/1.1 exchange each request
//!   drives in its own task ([`upstream::http1`]).
//! - [`control`]: the arc-swapped per-generation [`control::state`], [`control::reload`] with
//!   its file [`control::watch`], and the [`control::admin`] endpoints.
//! - [`webhooks`]: the inbound listener that verifies Twilio's webhook signatures
//!   ([`webhooks::signature`]) and forwards what verifies to the app.
//! - [`config`], [`metrics`], [`error_codes`] and [`ascii`]: leaves that everything imports
//!   and that import nothing of the crate — settings types (TOML in, every problem at once),
//!   one metrics struct per component, what each of the sidecar's error codes means, and
//!   numbers written as bytes without `core::fmt`.
//! - Around them: [`app`] (wiring: build, bind, serve, drain), [`commands`] (`check`,
//!   `validate`), [`dev`] (`dev` mode and its TLS stand-in for Twilio) and [`telemetry`].

#![forbid(unsafe_code)]

pub mod app;
pub mod ascii;
pub mod commands;
pub mod config;
pub mod control;
pub mod credentials;
pub mod dev;
pub mod error_codes;
pub mod gate;
pub mod intercept;
pub mod metrics;
pub mod proxy;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;
