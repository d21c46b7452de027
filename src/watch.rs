//! Reload on file change: watches the directories holding the config file and every file it
//! references (secrets, CA, policy documents) and, after a quiet period, asks the reloader for
//! a reload.
//!
//! Directories rather than files, so that Kubernetes' atomic swap of a mounted Secret (a new
//! timestamped directory, then a rename of the `..data` symlink) and editors that write a temp
//! file and rename it are both seen. The debounce turns a burst of events into one reload; the
//! reloader then skips reloads whose inputs did not actually change. The watched set follows
//! the config: after each reload it is recomputed from the state now serving.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::reload::Reloader;
use crate::state::SharedState;

/// The directories to watch for `files`.
pub fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .map(|f| match f.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => Path::new(".").to_path_buf(),
        })
        .collect()
}

/// The watcher and the directories it watches now.
struct WatchSet {
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
}

impl WatchSet {
    /// Lines the watched directories up with the config now serving; returns the debounce.
    fn sync(&mut self, shared: &SharedState) -> Duration {
        let (wanted, debounce) = {
            let state = shared.load();
            let reload = &state.config.reload;
            let wanted = if reload.watch && state.config.path.is_some() {
                directories(&state.config.watched_files())
            } else {
                BTreeSet::new()
            };
            (wanted, reload.debounce)
        };
        for dir in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(dir);
        }
        for dir in wanted.difference(&self.watched) {
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => debug!(dir = %dir.display(), "watching for changes"),
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch this directory; changes there need SIGHUP or POST /reload")
                }
            }
        }
        if self.watched != wanted && !wanted.is_empty() {
            info!(
                directories = wanted.len(),
                "watching config and secret files for changes"
            );
        }
        self.watched = wanted;
        debounce
    }
}

/// Registers the watches now (so nothing that changes after this call is missed) and spawns
/// the task that turns file events into reloads. `None` when watching is impossible here.
pub fn start(reloader: Arc<Reloader>, shared: Arc<SharedState>) -> Option<JoinHandle<()>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let events = tx.clone();
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(e)
            if matches!(
                e.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) =>
        {
            let _ = events.send(());
        }
        Ok(_) => {}
        Err(e) => warn!(error = %e, "file watch error"),
    };
    let watcher = match notify::recommended_watcher(handler) {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "cannot watch files; reload with SIGHUP or POST /reload instead");
            return None;
        }
    };
    let mut set = WatchSet {
        watcher,
        watched: BTreeSet::new(),
    };
    set.sync(&shared);
    // Anything that changed between the first load and the watches being in place: one check
    // (the reloader skips it when the files read the same).
    let _ = tx.send(());
    Some(tokio::spawn(run(set, rx, reloader, shared)))
}

async fn run(
    mut set: WatchSet,
    mut rx: UnboundedReceiver<()>,
    reloader: Arc<Reloader>,
    shared: Arc<SharedState>,
) {
    loop {
        let debounce = set.sync(&shared);
        if rx.recv().await.is_none() {
            return;
        }
        // Debounce: wait until the burst is over.
        loop {
            match tokio::time::timeout(debounce, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        // Failures are logged and counted by the reloader; the old state keeps serving.
        let _ = reloader.reload("watch").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_of_files() {
        let dirs = directories(&[
            PathBuf::from("/etc/ts/sidecar.toml"),
            PathBuf::from("/var/run/secrets/twilio/key_sid"),
            PathBuf::from("/var/run/secrets/twilio/secret"),
            PathBuf::from("local.toml"),
        ]);
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/etc/ts", "/var/run/secrets/twilio", "."]);
    }
}
