//! The operator commands that do not serve traffic: [`check`] (explain one decision),
//! [`validate`] (load and lint a config, every problem at once) and [`client_key`] (a new
//! local key for a `[[clients]]` table).

mod ca;
mod check;
mod client_key;
mod validate;

pub use ca::ca_init;
pub use check::{check, check_as, CHECK_ALLOWED, CHECK_DENIED, CHECK_INVALID};
pub use client_key::{client_key, new_client_key};
pub use validate::validate;
