//! twilio-sidecar: an outbound authenticating sidecar proxy for Twilio's REST APIs.
//!
//! Apps send plain, unauthenticated HTTP to it on loopback. It works out which Twilio host the
//! request is for, checks it against a least-privilege policy written like Twilio restricted-key
//! permissions (default deny), strips whatever credentials the app sent, attaches the account's
//! credential and forwards over verified TLS. The app never holds a Twilio secret.
//!
//! # Layout
//!
//! The request flows one way: `server → proxy → gate (route → request_path → policy) →
//! credentials → upstream`.
//!
//! - [`server`]: accept loop (HTTP/1.1 + h2c), bound listener in, shutdown future, drain.
//! - [`proxy`]: the request phases top to bottom, and the one place errors become responses.
//! - [`gate`]: phases 1–4 as pure functions (shared with `check`).
//! - [`route`]: which allowed Twilio host a request is for; never an open proxy.
//! - [`request_path`]: canonical-or-refuse path parsing, decoded once.
//! - [`policy`]: the rule language ([`policy::rule`]), its compiled matcher and its lint.
//! - [`credentials`]: each account's ready-made `Authorization` header.
//! - [`upstream`]: verified TLS to Twilio (rustls), `connect_to` override.
//! - [`connection_pool`]: per-thread, per-host upstream connections (h2 shared, HTTP/1.1 leased).
//! - [`paging`]: paging links in JSON pages pointed back at the sidecar.
//! - [`error`]: Twilio-shaped JSON errors and their codes.
//!
//! Beside it: [`config`] (TOML in, every problem at once), [`state`] (the arc-swapped
//! per-generation snapshot), [`reload`] with its file [`watch`], [`admin`] (metrics, health, config), [`metrics`],
//! [`app`] (wiring), [`commands`] (`check`, `validate`), [`catalogue`] (Twilio's operations), [`dev`] with its [`stand_in`] for
//! Twilio, [`telemetry`] (logging) and [`twilio_hosts`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod catalogue;
pub mod commands;
pub mod config;
pub mod connection_pool;
pub mod credentials;
pub mod dev;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod paging;
pub mod policy;
pub mod proxy;
pub mod reload;
pub mod request_path;
pub mod route;
pub mod server;
pub mod stand_in;
pub mod state;
pub mod telemetry;
pub mod twilio_hosts;
pub mod upstream;
pub mod watch;
