//! Reload on file change: watches the directories holding the config file and every file it
//! references (secrets, CA, policy documents) and asks the reloader for a reload when one of
//! those files may have changed.
//!
//! Directories rather than files, so that Kubernetes' atomic swap of a mounted Secret (a new
//! timestamped directory, then a rename of the `..data` symlink) and editors that write a temp
//! file and rename it are both seen. But only events for the names that can change a
//! referenced file count ([`WatchPoints`]): the file's own name, and the directory entries its
//! symlinks resolve through (`..data`). Everything else written in those directories — a log
//! file beside the config, a sqlite journal, a busy `/etc` — is ignored, so it can neither
//! postpone a reload nor cause one.
//!
//! The debounce turns a burst of relevant events into one reload, and it is bounded: the
//! first relevant event opens a window that closes after the quiet period
//! (`reload.debounce`) or [`MAX_WINDOW`] after that first event, whichever comes first. The
//! reloader then skips reloads whose inputs did not actually change. The watched set follows
//! the config and the file system: after each burst it is recomputed from the state now
//! serving.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::control::reload::Reloader;
use crate::control::state::SharedState;

/// However busy a watched file is, a reload starts at most this long after the first change.
pub const MAX_WINDOW: Duration = Duration::from_secs(1);

/// How many symlinks are followed from one referenced file (a loop ends here).
const MAX_LINKS: usize = 8;

/// The directory entries whose change can change a referenced file, by directory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchPoints {
    entries: BTreeMap<PathBuf, BTreeSet<OsString>>,
}

impl WatchPoints {
    /// The watch points of `files`, following symlinks as they are on disk now.
    pub fn of(files: &[PathBuf]) -> WatchPoints {
        let mut points = WatchPoints::default();
        for file in files {
            points.add_file(file);
        }
        points
    }

    /// The directories to watch.
    pub fn directories(&self) -> BTreeSet<PathBuf> {
        self.entries.keys().cloned().collect()
    }

    /// True when an event on `path` can have changed a referenced file: it names a watch point,
    /// or a watched directory itself (removed or moved).
    pub fn is_relevant(&self, path: &Path) -> bool {
        let path = normalize(path);
        if self.entries.contains_key(&path) {
            return true;
        }
        match (path.file_name(), parent(&path)) {
            (Some(name), Some(dir)) => self.entries.get(&dir).is_some_and(|n| n.contains(name)),
            _ => false,
        }
    }

    /// `file`'s own entry, then each entry its symlinks resolve through. For a Kubernetes
    /// Secret (`key_sid -> ..data/key_sid`, `..data -> ..2026_11_26_…`) that is `key_sid`,
    /// `..data` (renamed on every rotation) and the file in the current timestamped directory.
    fn add_file(&mut self, file: &Path) {
        let mut current = normalize(file);
        for _ in 0..MAX_LINKS {
            let (Some(dir), Some(name)) = (parent(&current), current.file_name()) else {
                return;
            };
            self.add(&dir, name);
            self.add_linked_ancestors(&dir);
            let Ok(target) = std::fs::read_link(&current) else {
                return;
            };
            if target.is_relative() {
                // The link resolves through an entry of its own directory (`..data/key_sid`):
                // replacing that entry changes the file.
                if let Some(Component::Normal(first)) = target.components().next() {
                    self.add(&dir, first);
                }
                let joined = dir.join(&target);
                // The rest of the chain as the file system resolves it now (the timestamped
                // directory behind `..data`), so in-place edits there are seen too.
                current = std::fs::canonicalize(&joined).unwrap_or_else(|_| normalize(&joined));
            } else {
                current = normalize(&target);
            }
        }
    }

    /// A directory on the way that is itself a symlink (`/etc/twilio-sidecar/secrets ->
    /// secrets.2026-11-26`, swapped to rotate a pair of files at once): a new target is seen
    /// only in the directory holding the link.
    fn add_linked_ancestors(&mut self, dir: &Path) {
        for ancestor in dir.ancestors() {
            let is_link = std::fs::symlink_metadata(ancestor).is_ok_and(|m| m.is_symlink());
            if let (true, Some(up), Some(name)) = (is_link, parent(ancestor), ancestor.file_name())
            {
                self.add(&up, name);
            }
        }
    }

    fn add(&mut self, dir: &Path, name: &std::ffi::OsStr) {
        self.entries
            .entry(dir.to_path_buf())
            .or_default()
            .insert(name.to_os_string());
    }
}

/// `path` without `.` components in the middle (`a/./b` is `a/b`), so that the paths the
/// watcher reports compare equal to the ones the config named.
fn normalize(path: &Path) -> PathBuf {
    let mut out: PathBuf = path.components().collect();
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The directory holding `path`: `.` for a bare file name.
fn parent(path: &Path) -> Option<PathBuf> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => Some(normalize(p)),
        Some(_) => Some(PathBuf::from(".")),
        None => None,
    }
}

/// The directories to watch for `files`.
pub fn directories(files: &[PathBuf]) -> BTreeSet<PathBuf> {
    WatchPoints::of(files).directories()
}

/// The watcher, the directories it watches now, and the points its event handler filters by.
struct WatchSet {
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
    points: Arc<ArcSwap<WatchPoints>>,
}

impl WatchSet {
    /// Lines the watch up with the config now serving (and the symlinks on disk now); returns
    /// the debounce.
    fn sync(&mut self, shared: &SharedState) -> Duration {
        let (files, debounce) = {
            let state = shared.load();
            let reload = &state.config.reload;
            let files = if reload.watch && state.config.path.is_some() {
                state.config.watched_files()
            } else {
                Vec::new()
            };
            (files, reload.debounce)
        };
        let points = WatchPoints::of(&files);
        let wanted = points.directories();
        // Points first: an event in a newly watched directory must find its names.
        self.points.store(Arc::new(points));
        for dir in self.watched.difference(&wanted) {
            let _ = self.watcher.unwatch(dir);
        }
        let mut watched = BTreeSet::new();
        for dir in &wanted {
            if self.watched.contains(dir) {
                watched.insert(dir.clone());
                continue;
            }
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    debug!(dir = %dir.display(), "watching for changes");
                    watched.insert(dir.clone());
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch this directory; changes there need SIGHUP or POST /reload")
                }
            }
        }
        if self.watched != watched && !watched.is_empty() {
            info!(
                directories = watched.len(),
                "watching config and secret files for changes"
            );
        }
        self.watched = watched;
        debounce
    }
}

/// Registers the watches now (so nothing that changes after this call is missed) and spawns
/// the task that turns file events into reloads. `None` when there is no config file to watch
/// (`dev`) or watching is impossible here.
pub fn start(reloader: Arc<Reloader>, shared: Arc<SharedState>) -> Option<JoinHandle<()>> {
    // Built in (dev mode): no file could ever change the config, so nothing is watched.
    shared.load().config.path.as_ref()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let events = tx.clone();
    let points = Arc::new(ArcSwap::from_pointee(WatchPoints::default()));
    let filter = points.clone();
    // Runs on the watcher's thread for every event in a watched directory: no logging here
    // for ordinary events, since a log file in a watched directory would feed itself.
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(e)
            if matches!(
                e.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) =>
        {
            let points = filter.load();
            if e.paths.iter().any(|p| points.is_relevant(p)) {
                let _ = events.send(());
            }
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
        points,
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
        if !wait_for_quiet(&mut rx, Instant::now(), debounce).await {
            return;
        }
        // Failures are logged and counted by the reloader; the old state keeps serving.
        let _ = reloader.reload("watch").await;
    }
}

/// The debounce after the first relevant event at `first`: returns once `debounce` passes
/// without another event, or [`MAX_WINDOW`] after `first`, whichever is sooner. False when the
/// watcher is gone.
async fn wait_for_quiet(
    rx: &mut UnboundedReceiver<()>,
    first: Instant,
    debounce: Duration,
) -> bool {
    let hard_stop = first + MAX_WINDOW;
    let mut quiet_at = first + debounce;
    loop {
        match tokio::time::timeout_at(quiet_at.min(hard_stop), rx.recv()).await {
            Ok(Some(())) => quiet_at = Instant::now() + debounce,
            Ok(None) => return false,
            Err(_) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn directories_of_files() {
        let dirs = directories(&[
            PathBuf::from("/etc/ts/sidecar.toml"),
            PathBuf::from("/run/secrets/twilio/key_sid"),
            PathBuf::from("/run/secrets/twilio/secret"),
            PathBuf::from("local.toml"),
        ]);
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/etc/ts", "/run/secrets/twilio", "."]);
    }

    #[test]
    fn only_the_referenced_names_are_relevant() {
        let points = WatchPoints::of(&[
            PathBuf::from("/etc/ts/sidecar.toml"),
            PathBuf::from("/etc/ts/./policies/sms.json"),
            PathBuf::from("local.toml"),
        ]);
        assert!(points.is_relevant(Path::new("/etc/ts/sidecar.toml")));
        assert!(points.is_relevant(Path::new("/etc/ts/policies/sms.json")));
        assert!(points.is_relevant(Path::new("./local.toml")));
        assert!(points.is_relevant(Path::new("local.toml")));
        // The watched directory itself going away.
        assert!(points.is_relevant(Path::new("/etc/ts")));
        for noise in [
            "/etc/ts/sidecar.log",
            "/etc/ts/.sidecar.toml.swp",
            "/etc/ts/policies/other.json",
            "./local.toml.bak",
            "/etc/passwd",
        ] {
            assert!(!points.is_relevant(Path::new(noise)), "{noise}");
        }
    }

    #[test]
    fn kubernetes_secret_links_make_data_relevant() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("..2026_11_26_1")).unwrap();
        std::fs::write(d.join("..2026_11_26_1/secret"), "s").unwrap();
        symlink("..2026_11_26_1", d.join("..data")).unwrap();
        symlink("..data/secret", d.join("secret")).unwrap();
        let points = WatchPoints::of(&[d.join("secret")]);
        assert!(points.is_relevant(&d.join("secret")));
        assert!(points.is_relevant(&d.join("..data")));
        let real = std::fs::canonicalize(d.join("..2026_11_26_1")).unwrap();
        assert!(points.is_relevant(&real.join("secret")));
        assert!(!points.is_relevant(&d.join("..data_tmp")));
        assert!(!points.is_relevant(&d.join("app.log")));
    }

    #[test]
    fn absolute_links_watch_where_they_point() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("sidecar.toml"), "").unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        symlink(real.join("sidecar.toml"), etc.join("sidecar.toml")).unwrap();
        let points = WatchPoints::of(&[etc.join("sidecar.toml")]);
        assert!(points.directories().contains(&real));
        assert!(points.is_relevant(&real.join("sidecar.toml")));
        assert!(!points.is_relevant(&real.join("other.toml")));
    }

    #[test]
    fn a_linked_directory_is_watched_where_its_link_lives() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("secrets.1")).unwrap();
        std::fs::write(d.join("secrets.1/key_sid"), "SK").unwrap();
        symlink("secrets.1", d.join("secrets")).unwrap();
        let points = WatchPoints::of(&[d.join("secrets/key_sid")]);
        // Swapping the link (rename of secrets.tmp over secrets) is an event for `secrets`.
        assert!(points.is_relevant(&d.join("secrets")));
        assert!(points.is_relevant(&d.join("secrets/key_sid")));
        assert!(!points.is_relevant(&d.join("secrets.tmp")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_debounce_window_is_bounded_however_busy_the_directory() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let first = Instant::now();
        let chatter = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if tx.send(()).is_err() {
                    return;
                }
            }
        });
        assert!(wait_for_quiet(&mut rx, first, Duration::from_millis(250)).await);
        let waited = first.elapsed();
        assert!(
            waited >= MAX_WINDOW && waited < MAX_WINDOW + Duration::from_millis(60),
            "{waited:?}"
        );
        chatter.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_directory_reloads_after_the_debounce() {
        let (_tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let first = Instant::now();
        assert!(wait_for_quiet(&mut rx, first, Duration::from_millis(250)).await);
        assert_eq!(first.elapsed(), Duration::from_millis(250));
    }
}
