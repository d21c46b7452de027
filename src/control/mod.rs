//! The control plane: the per-generation [`state`] every request reads, [`reload`] and its file
//! [`watch`], and the [`admin`] listener's endpoints.

pub mod admin;
pub mod reload;
pub mod state;
pub mod watch;
