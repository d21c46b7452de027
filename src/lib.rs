//! twilio-sidecar: an outbound authenticating sidecar proxy for Twilio's REST APIs.
//!
//! Apps send plain, unauthenticated HTTP to it on loopback. It works out which Twilio host the
//! request is for, checks it against a least-privilege policy written like Twilio restricted-key
//! permissions (default deny), strips whatever credentials the app sent, attaches the account's
//! credential and forwards over verified TLS. The app never holds a Twilio secret.
//!
//! # Layout
//!
//! LAYOUT

#![forbid(unsafe_code)]

pub mod app;
pub mod commands;
pub mod config;
pub mod control;
pub mod credentials;
pub mod dev;
pub mod gate;
pub mod metrics;
pub mod proxy;
pub mod telemetry;
pub mod upstream;
