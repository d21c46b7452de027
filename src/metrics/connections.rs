//! Connection-level metrics, per listener (`proxy`, `webhooks`, `admin`): connections open,
//! refused at the listener's cap, and closed by the sidecar for sending no request, for
//! idling or for reading nothing.

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The vectors, registered once.
pub struct ConnectionMetrics {
    open: IntGaugeVec,
    refused: IntCounterVec,
    closed: IntCounterVec,
}

/// One listener's handles, resolved once so accepting a connection touches no label map.
#[derive(Clone)]
pub struct ListenerMetrics {
    pub open: IntGauge,
    /// Closed at once: the listener was at its connection cap.
    pub refused: IntCounter,
    /// Closed without a complete first request within `header_read_timeout`.
    pub silent: IntCounter,
    /// Closed (gracefully) after `idle_timeout` with nothing in flight.
    pub idle: IntCounter,
    /// Cut off: the peer read nothing of a response for `write_timeout`.
    pub write_timeout: IntCounter,
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListenerMetrics")
    }
}

impl ConnectionMetrics {
    pub fn new() -> Result<ConnectionMetrics, prometheus::Error> {
        Ok(ConnectionMetrics {
            open: IntGaugeVec::new(
                Opts::new("connections", "App (or admin) connections open, by listener."),
                &["listener"],
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "connections_refused_total",
                    "Connections closed at once because the listener was at its cap (limits.max_connections, limits.max_admin_connections).",
                ),
                &["listener"],
            )?,
            closed: IntCounterVec::new(
                Opts::new(
                    "connections_closed_total",
                    "Connections the sidecar closed: no_request (no complete first request within limits.header_read_timeout), idle (nothing in flight for limits.idle_timeout), write_timeout (the peer read nothing for limits.write_timeout).",
                ),
                &["listener", "reason"],
            )?,
        })
    }

    pub(super) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.open.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.closed.clone()))?;
        Ok(())
    }

    /// The handles for `listener`, every series created now so it is exported from zero.
    pub fn listener(&self, listener: &str) -> ListenerMetrics {
        ListenerMetrics {
            open: self.open.with_label_values(&[listener]),
            refused: self.refused.with_label_values(&[listener]),
            silent: self.closed.with_label_values(&[listener, "no_request"]),
            idle: self.closed.with_label_values(&[listener, "idle"]),
            write_timeout: self.closed.with_label_values(&[listener, "write_timeout"]),
        }
    }
}
