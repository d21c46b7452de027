//! The log writer: every thread's log lines go into one buffer, and a thread of its own writes
//! them to stderr in batches.
//!
//! Why not stderr itself: a serving thread that writes its own access-log line makes a system
//! call per request — about a sixth of what a request costs on one worker (benches/RESULTS.md) —
//! and, worse, stops serving whenever whatever reads stderr falls behind (a pipe to a stalled
//! log collector fills up and `write` blocks). Here a line costs a copy under a lock held for
//! just that copy.
//!
//! A line waits at most [`LINGER`] before it is written, less when a batch fills up. An error
//! line is written at once, by the thread that logs it: errors are rare, and one may be the
//! last thing the process says. When stderr cannot keep up and [`MAX_PENDING`] bytes are
//! waiting, new lines are dropped and counted (`twilio_sidecar_log_lines_dropped_total`), never queued without bound; a warning saying how
//! many follows once stderr drains. What a batch holds when the process ends is written by
//! [`LogGuard`]'s drop; a process killed outright loses at most the last [`LINGER`] of lines.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::metrics;

/// How long a line may wait for others to share its write.
pub const LINGER: Duration = Duration::from_millis(5);
/// A batch this large is written without waiting out [`LINGER`].
const HIGH_WATER: usize = 64 * 1024;
/// Lines beyond this many waiting bytes are dropped.
pub const MAX_PENDING: usize = 4 * 1024 * 1024;
/// A batch buffer up to this size is kept for the next batch rather than freed.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Hands each formatted event to the shared buffer; the `MakeWriter` given to the subscriber.
#[derive(Clone)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer thread: the first line of a batch, a full batch, or closing.
    wake: Condvar,
    /// Held while writing, so batches (and error lines) reach stderr in the order taken.
    output: Mutex<Box<dyn Write + Send>>,
}

#[derive(Default)]
struct Pending {
    lines: Vec<u8>,
    /// Dropped since the last warning about it.
    dropped: u64,
    closed: bool,
}

/// Writes what is left and stops the writer thread when dropped: held by `main` for as long
/// as the process logs.
#[must_use = "lines still waiting are written only when the guard is dropped"]
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// A writer to `output` and the thread that drains it. Falls back to writing each line
    /// directly if the thread cannot be started.
    pub fn new(output: impl Write + Send + 'static) -> (LogWriter, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            output: Mutex::new(Box::new(output)),
        });
        let drain = shared.clone();
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || drain.run())
            .ok();
        if thread.is_none() {
            lock(&shared.pending).closed = true;
        }
        (
            LogWriter {
                shared: shared.clone(),
            },
            LogGuard { shared, thread },
        )
    }

    /// Queues one whole line (or several), as a non-error event's would be.
    pub fn append(&self, lines: &[u8]) {
        self.shared.append(lines, false);
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineSink<'a>;

    fn make_writer(&'a self) -> LineSink<'a> {
        LineSink {
            shared: &self.shared,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineSink<'a> {
        LineSink {
            shared: &self.shared,
            urgent: *meta.level() == Level::ERROR,
        }
    }
}

/// One event's way into the buffer.
pub struct LineSink<'a> {
    shared: &'a Shared,
    /// Written out before the logging call returns.
    urgent: bool,
}

impl Write for LineSink<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.shared.append(line, self.urgent);
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineSink<'_> {
    fn drop(&mut self) {
        if self.urgent {
            self.shared.write_out();
        }
    }
}

impl Shared {
    fn append(&self, line: &[u8], urgent: bool) {
        let mut pending = lock(&self.pending);
        if pending.closed && !urgent {
            // No writer thread (it could not start, or the process is ending): write directly.
            drop(pending);
            let _ = lock(&self.output).write_all(line);
            return;
        }
        if pending.lines.len() + line.len() > MAX_PENDING {
            pending.dropped += 1;
            metrics::log_line_dropped();
            return;
        }
        let before = pending.lines.len();
        pending.lines.extend_from_slice(line);
        let after = pending.lines.len();
        drop(pending);
        // Only a batch's first line and its filling up wake the writer, not every line.
        if before == 0 || (before < HIGH_WATER && after >= HIGH_WATER) {
            self.wake.notify_one();
        }
    }

    /// The writer thread: waits for a first line, lets a batch gather, writes it.
    fn run(&self) {
        loop {
            let dropped = {
                let mut pending = lock(&self.pending);
                while pending.lines.is_empty() && pending.dropped == 0 && !pending.closed {
                    pending = self
                        .wake
                        .wait(pending)
                        .unwrap_or_else(PoisonError::into_inner);
                }
                let deadline = Instant::now() + LINGER;
                while pending.lines.len() < HIGH_WATER && !pending.closed {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    pending = self
                        .wake
                        .wait_timeout(pending, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                if pending.closed {
                    break;
                }
                std::mem::take(&mut pending.dropped)
            };
            self.write_out();
            if dropped > 0 {
                // Through the subscriber, so it has the format of every other line.
                tracing::warn!(
                    dropped,
                    "log lines dropped: stderr was not read as fast as they were logged"
                );
            }
        }
        self.write_out();
    }

    /// Writes every waiting line now.
    fn write_out(&self) {
        let mut output = lock(&self.output);
        let mut batch = std::mem::take(&mut lock(&self.pending).lines);
        if batch.is_empty() {
            return;
        }
        // Nowhere to report a failed write to: the log is where failures are reported.
        let _ = output.write_all(&batch);
        let _ = output.flush();
        drop(output);
        if batch.capacity() <= KEEP_CAPACITY {
            batch.clear();
            let mut pending = lock(&self.pending);
            if pending.lines.is_empty() {
                pending.lines = batch;
            }
        }
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.shared.write_out();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing panics while holding these; after a panic elsewhere the buffer is still valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::metrics::log_lines_dropped as dropped_lines;

    /// Output the test can read, and whose writes can be held up.
    #[derive(Clone, Default)]
    struct Capture {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _held = self.gate.lock().unwrap();
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.bytes.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8(self.bytes.lock().unwrap().clone()).unwrap()
        }
    }

    fn line(w: &LogWriter, level: Level, text: &str) {
        let mut sink = LineSink {
            shared: &w.shared,
            urgent: level == Level::ERROR,
        };
        sink.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_in_batches_and_in_order() {
        let out = Capture::default();
        let (w, guard) = LogWriter::new(out.clone());
        std::thread::scope(|s| {
            for t in 0..4 {
                let w = w.clone();
                s.spawn(move || {
                    for i in 0..2_000 {
                        line(&w, Level::INFO, &format!("thread {t} line {i:05}\n"));
                    }
                });
            }
        });
        drop(guard);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 8_000);
        for t in 0..4 {
            let mine: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| l.starts_with(&format!("thread {t} ")))
                .collect();
            let expected: Vec<String> = (0..2_000)
                .map(|i| format!("thread {t} line {i:05}"))
                .collect();
            assert_eq!(mine, expected, "thread {t}'s lines out of order or torn");
        }
        let writes = out.writes.load(Ordering::Relaxed);
        assert!(writes < 8_000 / 4, "{writes} writes for 8,000 lines");
    }

    #[test]
    fn a_line_is_written_within_the_linger_without_another_to_push_it() {
        let out = Capture::default();
        let (w, _guard) = LogWriter::new(out.clone());
        line(&w, Level::INFO, "alone\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        while out.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(out.text(), "alone\n");
    }

    #[test]
    fn an_error_line_is_out_before_the_call_returns_and_after_earlier_lines() {
        let out = Capture::default();
        let (w, _guard) = LogWriter::new(out.clone());
        line(&w, Level::INFO, "first\n");
        line(&w, Level::ERROR, "then the error\n");
        assert_eq!(out.text(), "first\nthen the error\n");
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_growing_or_blocking() {
        let out = Capture::default();
        let (w, guard) = LogWriter::new(out.clone());
        let before = dropped_lines();
        let line_text = format!("{}\n", "x".repeat(1023));
        let stall = out.gate.lock().unwrap();
        // The writer thread takes the first batch and blocks in its write; the lines after it
        // fill the buffer up to its cap and the rest are dropped — without blocking this thread.
        let started = Instant::now();
        for _ in 0..(3 * MAX_PENDING / 1024) {
            line(&w, Level::INFO, &line_text);
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        assert!(lock(&w.shared.pending).lines.len() <= MAX_PENDING);
        let dropped = dropped_lines() - before;
        assert!(dropped >= (MAX_PENDING / 1024) as u64, "dropped {dropped}");
        drop(stall);
        drop(guard);
        let text = out.text();
        let written = text.lines().filter(|l| l.starts_with('x')).count() as u64;
        assert_eq!(written + dropped, 3 * (MAX_PENDING / 1024) as u64);
    }
}
