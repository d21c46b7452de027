//! The operator commands that do not serve traffic: [`check`] (explain one decision) and
//! [`validate`] (load and lint a config, every problem at once).

mod check;
mod validate;

pub use check::{check, CHECK_ALLOWED, CHECK_DENIED, CHECK_INVALID};
pub use validate::validate;
