//! Twilio's rate limits, absorbed: a slot under the account's `max_concurrent` before the
//! upstream call, and the retries after a 429 — which Twilio documents as never processed,
//! so safe to send again whatever the method.
//!
//! A retry waits a full-jitter exponential backoff (100 ms · 2ⁿ, at most 3 s) or the
//! `Retry-After` Twilio sent, whichever Twilio said, never past the request's own deadline;
//! it gives up its slot while it waits, and is sent with a fresh credential (a new bearer
//! token if the cache has one, a new PKCV signature). The policy decision is never made again.
//! After `upstream.retry_429` retries the last 429 goes to the app unchanged.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use tokio::time::Instant;

use super::{Proxy, Record};
use crate::control::state::State;
use crate::credentials::oauth::timing::{backoff_delay, default_jitter};
use crate::credentials::Account;
use crate::proxy::error::ProxyError;
use crate::upstream::account_limit::{AccountLimit, QueueRefusal, Slot};
use crate::upstream::body::{replayable, RequestBody, UpstreamBody};

/// First backoff ceiling; it doubles per retry.
const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff ceiling.
const BACKOFF_MAX: Duration = Duration::from_secs(3);

impl Proxy {
    /// Phase 7 — **upstream call**, its slot: with `max_concurrent`, wait (FIFO) for one of
    /// the account's slots. Short-circuits with 503 (79430) when the queue is full or the
    /// wait outlasts `upstream.queue_timeout`.
    pub(super) async fn queue<'a>(
        &self,
        state: &State,
        limit: &'a AccountLimit,
        account: &str,
    ) -> Result<Slot<'a>, ProxyError> {
        let settings = &state.config.upstream;
        let started = std::time::Instant::now();
        let slot = limit
            .acquire(settings.max_queued, settings.queue_timeout)
            .await;
        let metrics = &self.metrics.proxy;
        metrics
            .queue_wait
            .with_label_values(&[account])
            .observe(started.elapsed().as_secs_f64());
        slot.map_err(|refusal| {
            metrics
                .queue_refusals
                .with_label_values(&[account, refusal.as_str()])
                .inc();
            ProxyError::AccountBusy {
                account: account.to_string(),
                reason: match refusal {
                    QueueRefusal::Full => "found upstream.max_queued requests already waiting",
                    QueueRefusal::TimedOut => "waited longer than upstream.queue_timeout",
                },
            }
        })
    }

    /// Phase 7 — **upstream call**, after Twilio answered 429: sent again, up to
    /// `upstream.retry_429` times, while time is left; `spare` is a copy of the request (none
    /// when its body was streamed, which cannot be sent twice), `body` its bytes for a new
    /// PKCV signature. Returns the first answer that is not a 429, or the last 429.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn retry_429<'s>(
        &self,
        state: &'s State,
        account: &'s Account,
        mut response: Response<UpstreamBody>,
        spare: Option<Request<RequestBody>>,
        body: Option<Bytes>,
        mut slot: Option<Slot<'s>>,
        record: &mut Record<'s>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let metrics = &self.metrics.proxy;
        let sid = record.account;
        metrics.twilio_429s.with_label_values(&[sid]).inc();
        let outcome = |o: &str| metrics.retries_429.with_label_values(&[sid, o]).inc();
        let Some(spare) = spare else {
            outcome("not_retryable");
            return Ok(response);
        };
        let jitter = default_jitter();
        for attempt in 0..state.config.upstream.retry_429 {
            let delay = delay_429(
                attempt,
                response.headers().get(header::RETRY_AFTER),
                jitter(),
            );
            let now = Instant::now();
            if record.deadline.is_some_and(|d| now + delay >= d) {
                outcome("deadline");
                return Ok(response);
            }
            drop(response);
            // Others may use the slot while this one waits.
            drop(slot.take());
            tokio::time::sleep(delay).await;
            if let Some(limit) = &account.limit {
                slot = Some(self.queue(state, limit, sid).await?);
            }
            let mut again = replayable(&spare).ok_or_else(|| {
                ProxyError::BadBody("the request cannot be sent again".to_string())
            })?;
            let fresh = self.credential(account, sid).await?;
            again
                .headers_mut()
                .insert(header::AUTHORIZATION, fresh.header.clone());
            if let (Some(signer), Some(body)) = (&account.pkcv, &body) {
                let (mut parts, b) = again.into_parts();
                self.sign_pkcv(signer, &mut parts, body, sid).await?;
                again = Request::from_parts(parts, b);
            }
            record.retries = record.retries.saturating_add(1);
            outcome("retried");
            response = self.exchange(state, record.host, again).await?;
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                outcome("succeeded");
                return Ok(response);
            }
            metrics.twilio_429s.with_label_values(&[sid]).inc();
        }
        outcome("exhausted");
        Ok(response)
    }
}

/// How long to wait before retry `attempt` (0-based): `Retry-After` in seconds when Twilio
/// sent one, else full jitter over 100 ms · 2ⁿ, at most 3 s (`u` uniform in [0, 1)).
pub(super) fn delay_429(attempt: u32, retry_after: Option<&HeaderValue>, u: f64) -> Duration {
    if let Some(seconds) = retry_after
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        return Duration::from_secs(seconds);
    }
    backoff_delay(attempt + 1, BACKOFF_BASE, BACKOFF_MAX, u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_wins_and_backoff_doubles_to_its_cap() {
        let after = HeaderValue::from_static("2");
        assert_eq!(delay_429(0, Some(&after), 0.5), Duration::from_secs(2));
        let date = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert!(delay_429(0, Some(&date), 0.999) <= Duration::from_millis(100));
        assert!(delay_429(0, None, 0.999) <= Duration::from_millis(100));
        assert!(delay_429(1, None, 0.999) > Duration::from_millis(150));
        assert!(delay_429(1, None, 0.999) <= Duration::from_millis(200));
        assert!(delay_429(9, None, 0.999) <= Duration::from_secs(3));
        assert!(delay_429(9, None, 0.999) > Duration::from_millis(2900));
        assert_eq!(delay_429(3, None, 0.0), Duration::ZERO);
    }
}
