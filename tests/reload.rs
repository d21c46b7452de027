//! Hot reload: secrets rotated Kubernetes-style under continuous load, broken configs, SIGHUP,
//! editor-style writes and listen-address changes — against the real binary.

mod common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use twilio_sidecar::dev::stand_in::{echo, Recorded};

fn key_sid(n: u64) -> String {
    format!("SK{n:032x}")
}

fn secret(n: u64) -> String {
    format!("rotated-secret-generation-{n}")
}

/// Lays out `dir` the way the kubelet mounts a Secret: `key_sid` and `secret` are symlinks
/// into `..data`, itself a symlink to a timestamped directory. Rotation writes a new
/// timestamped directory and renames a fresh `..data_tmp` link over `..data` (atomic), then
/// removes the old directory.
fn k8s_rotate(dir: &Path, n: u64) {
    let stamp = format!("..2026_11_23_00_00_{n:04}");
    let new_dir = dir.join(&stamp);
    std::fs::create_dir(&new_dir).unwrap();
    std::fs::write(new_dir.join("key_sid"), key_sid(n)).unwrap();
    std::fs::write(new_dir.join("secret"), secret(n)).unwrap();
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for name in ["key_sid", "secret"] {
        if !dir.join(name).exists() {
            symlink(format!("..data/{name}"), dir.join(name)).unwrap();
        }
    }
    if let Some(old) = old {
        std::fs::remove_dir_all(dir.join(old)).unwrap();
    }
}

/// What the upstream saw, checked as it arrives.
#[derive(Default)]
struct Seen {
    total: AtomicU64,
    /// Requests whose key SID and secret came from different generations (must stay 0).
    mixed: AtomicU64,
    /// Requests with a credential that was never issued (must stay 0).
    unknown: AtomicU64,
    /// The newest generation seen so far.
    newest: AtomicU64,
}

impl Seen {
    fn check(&self, r: &Recorded) {
        self.total.fetch_add(1, Ordering::SeqCst);
        let auth = r.header_values("authorization");
        let decoded = auth
            .first()
            .and_then(|a| a.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let Some((user, pass)) = decoded.split_once(':') else {
            self.unknown.fetch_add(1, Ordering::SeqCst);
            return;
        };
        let user_gen = user
            .strip_prefix("SK")
            .and_then(|h| u64::from_str_radix(h, 16).ok());
        let pass_gen = pass
            .strip_prefix("rotated-secret-generation-")
            .and_then(|n| n.parse::<u64>().ok());
        match (user_gen, pass_gen) {
            (Some(a), Some(b)) if a == b => {
                self.newest.fetch_max(a, Ordering::SeqCst);
            }
            (Some(_), Some(_)) => {
                self.mixed.fetch_add(1, Ordering::SeqCst);
            }
            _ => {
                self.unknown.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

fn rotating_config(ctx: &Ctx, debounce: &str) -> String {
    let secrets = ctx.dir.join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    k8s_rotate(&secrets, 0);
    format!(
        r#"
{head}
[reload]
debounce = "{debounce}"
[[accounts]]
sid = "{SID}"
credential = {{ type = "api_key", key_sid = {{ file = "secrets/key_sid" }}, secret = {{ file = "secrets/secret" }} }}
[policy]
allow = ["/2010-04-01/Accounts/{{AccountSid}}/*"]
"#,
        head = listeners_and_upstream(ctx)
    )
}

fn messages() -> String {
    format!("/2010-04-01/Accounts/{SID}/Messages.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_secret_50_times_under_load_loses_nothing() {
    let seen = Arc::new(Seen::default());
    let stand_in = stand_in().await;
    let s = seen.clone();
    stand_in.set_responder(move |r| {
        s.check(r);
        echo(r)
    });
    let h = Arc::new(Harness::start_against(stand_in, |ctx| rotating_config(ctx, "50ms")).await);
    let secrets = h.dir.path().join("secrets");

    // Continuous load: four clients, each sending requests back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (h, stop, failures, sent) =
                (h.clone(), stop.clone(), failures.clone(), sent.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let resp = h.send("POST", &messages(), &[], b"Body=load").await;
                    sent.fetch_add(1, Ordering::SeqCst);
                    if resp.status != 200 {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", resp.status, resp.text()));
                    }
                }
            })
        })
        .collect();

    let mut latencies = Vec::new();
    for n in 1..=50u64 {
        let swapped = Instant::now();
        k8s_rotate(&secrets, n);
        while seen.newest.load(Ordering::SeqCst) < n {
            assert!(
                swapped.elapsed() < Duration::from_secs(1),
                "generation {n} not in use within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(swapped.elapsed());
    }
    // Keep the load on a moment after the last swap.
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    let total = seen.total.load(Ordering::SeqCst);
    assert!(total >= 1000, "only {total} requests under load");
    assert_eq!(total, sent.load(Ordering::SeqCst));
    assert_eq!(
        seen.mixed.load(Ordering::SeqCst),
        0,
        "a request carried a SID and a secret from different generations"
    );
    assert_eq!(seen.unknown.load(Ordering::SeqCst), 0);
    let max = latencies.iter().max().unwrap();
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    eprintln!("rotation to first use: mean {mean:?}, max {max:?}, {total} requests");

    let m = h.metrics().await;
    assert!(
        m.contains(&format!(
            r#"twilio_sidecar_credential_generation{{account="{SID}"}} 51"#
        )),
        "{m}"
    );
    assert!(
        m.contains(r#"twilio_sidecar_config_reloads_total{result="success",trigger="watch"} 50"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_mid_load_keeps_the_old_state_and_is_counted() {
    let h = Harness::start_with(|ctx| rotating_config(ctx, "50ms")).await;
    let config = h.dir.path().join("sidecar.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);

    std::fs::write(&config, "[policy\nallow = ").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = h.metrics().await;
        if m.contains(r#"twilio_sidecar_config_reloads_total{result="failure",trigger="watch"} 1"#)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the failed reload was not counted: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
    }
    let logs = h.logs().join("\n");
    assert!(
        logs.contains("config reload failed; still serving the previous config"),
        "{logs}"
    );
    assert!(
        logs.contains("sidecar.toml") && logs.contains("invalid TOML"),
        "{logs}"
    );

    // An empty secret (a file caught mid-write) is refused too.
    std::fs::write(&config, &good).unwrap();
    let secrets = h.dir.path().join("secrets");
    let target = std::fs::read_link(secrets.join("..data")).unwrap();
    std::fs::write(secrets.join(target).join("secret"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
    assert_eq!(h.last_authorization(), vec![basic(&key_sid(0), &secret(0))]);

    // The next good change is picked up.
    k8s_rotate(&secrets, 7);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        h.send("POST", &messages(), &[], b"").await;
        if h.last_authorization() == vec![basic(&key_sid(7), &secret(7))] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the good change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_editor_writes_trigger_reloads_and_listen_changes_need_a_restart() {
    let h = Harness::start_with(|ctx| rotating_config(ctx, "50ms")).await;
    // SIGHUP rebuilds even when nothing changed.
    std::process::Command::new("kill")
        .args(["-HUP", &h.child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h
        .metrics()
        .await
        .contains(r#"twilio_sidecar_config_reloads_total{result="success",trigger="signal"} 1"#)
    {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.admin_get("/config").await.json()["generation"], 2);

    // An editor writes a temp file and renames it over the config: a new policy and a new
    // listen address. The policy applies; the address needs a restart.
    assert_eq!(h.send("GET", "/v2/Nope", &[], b"").await.status, 403);
    let config = h.dir.path().join("sidecar.toml");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("allow = [", "allow = [\"GET /v2/Nope\", ")
        .replacen("address = \"127.0.0.1:0\"", "address = \"127.0.0.1:1\"", 1);
    let tmp = h.dir.path().join(".sidecar.toml.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while h.send("GET", "/v2/Nope", &[], b"").await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the edited policy was not applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = h.logs().join("\n");
    assert!(
        logs.contains("changing a listen address or a listener limit needs a restart")
            && logs.contains("listen.address"),
        "{logs}"
    );
    let m = h.metrics().await;
    assert!(m.contains("twilio_sidecar_state_generation 3"), "{m}");
}

/// Appends to a file in each of `dirs` every 20 ms until dropped: a log file beside the
/// config, a journal beside a secret.
struct Chatter {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Chatter {
    fn start(dirs: Vec<std::path::PathBuf>) -> Chatter {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            let mut files: Vec<_> = dirs
                .iter()
                .map(|d| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(d.join("app.log"))
                        .unwrap()
                })
                .collect();
            while !flag.load(Ordering::SeqCst) {
                for f in &mut files {
                    writeln!(f, "something unrelated happened").unwrap();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Chatter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Chatter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A file written more often than the debounce, beside the config and beside the Secret,
/// must not hold a rotation back: the swap is live within 1.5 s every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatty_neighbours_cannot_hold_a_rotation_back() {
    let h = Harness::start_with(|ctx| rotating_config(ctx, "250ms")).await;
    let secrets = h.dir.path().join("secrets");
    let _chatter = Chatter::start(vec![h.dir.path().to_path_buf(), secrets.clone()]);
    // Let the chatter run long enough to have starved a restart-on-every-event debounce.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in 1..=5u64 {
        let swapped = Instant::now();
        k8s_rotate(&secrets, n);
        loop {
            assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
            if h.last_authorization() == vec![basic(&key_sid(n), &secret(n))] {
                break;
            }
            assert!(
                swapped.elapsed() < Duration::from_millis(1500),
                "rotation {n} not live 1.5 s after the swap"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("rotation {n} live after {:?}", swapped.elapsed());
    }
    // The chatter alone never triggers a reload: only the five swaps did.
    let m = h.metrics().await;
    assert!(
        m.contains(r#"twilio_sidecar_config_reloads_total{result="success",trigger="watch"} 5"#),
        "{m}"
    );
}

/// The systemd rotation (README "Deployment"): the pair lives in a directory that a symlink
/// points at, and a rotation swaps the link. The watch sees the swap where the link lives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_linked_secrets_directory_rotates_the_pair() {
    fn write_pair(dir: &Path, n: u64) {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("key_sid"), key_sid(n)).unwrap();
        std::fs::write(dir.join("secret"), secret(n)).unwrap();
    }
    let h = Harness::start_with(|ctx| {
        // A directory of its own, which nothing else makes the watch look at.
        std::fs::create_dir(ctx.dir.join("keys")).unwrap();
        write_pair(&ctx.dir.join("keys/secrets.1"), 1);
        symlink("secrets.1", ctx.dir.join("keys/secrets")).unwrap();
        format!(
            r#"
{head}
[[accounts]]
sid = "{SID}"
credential = {{ type = "api_key", key_sid = {{ file = "keys/secrets/key_sid" }}, secret = {{ file = "keys/secrets/secret" }} }}
[policy]
allow = ["/2010-04-01/Accounts/{{AccountSid}}/*"]
"#,
            head = listeners_and_upstream(ctx)
        )
    })
    .await;
    let dir = &h.dir.path().join("keys");
    assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
    assert_eq!(h.last_authorization(), vec![basic(&key_sid(1), &secret(1))]);
    for n in 2..=4u64 {
        write_pair(&dir.join(format!("secrets.{n}")), n);
        let swapped = Instant::now();
        symlink(format!("secrets.{n}"), dir.join("secrets.tmp")).unwrap();
        std::fs::rename(dir.join("secrets.tmp"), dir.join("secrets")).unwrap();
        loop {
            assert_eq!(h.send("POST", &messages(), &[], b"").await.status, 200);
            let auth = h.last_authorization();
            if auth == vec![basic(&key_sid(n), &secret(n))] {
                break;
            }
            assert_eq!(
                auth,
                vec![basic(&key_sid(n - 1), &secret(n - 1))],
                "a mixed pair"
            );
            assert!(
                swapped.elapsed() < Duration::from_millis(1500),
                "rotation {n} not live 1.5 s after the swap"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        std::fs::remove_dir_all(dir.join(format!("secrets.{}", n - 1))).unwrap();
    }
}
