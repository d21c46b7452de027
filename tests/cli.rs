//! The binary's commands: config errors, `check`, `validate`, `dev`, and signals.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

fn good_config(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::write(dir.join("key_sid"), KEY_SID).unwrap();
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let ctx = Ctx {
        dir: dir.to_path_buf(),
        stand_in: "127.0.0.1:9".parse().unwrap(),
    };
    // No ca_file: check and validate need none.
    let text = standard_config(&ctx, "", POLICY).replace("ca_file = \"ca.pem\"\n", "");
    write(dir, "sidecar.toml", &text)
}

/// Runs `validate --config PATH ARGS…`: exit code, stdout, stderr.
fn validate(path: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = sidecar_command()
        .arg("validate")
        .arg("--config")
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `run --config PATH`, which must refuse to start with exit code 64; returns stderr.
fn run_refused(path: &std::path::Path) -> String {
    let out = sidecar_command()
        .args(["run", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_config_exits_64_listing_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "bad.toml",
        r#"
[listen]
address = "localhost"
[upstream]
default_host = "api.twilio.com.evil.example"
typo = 1
[[accounts]]
sid = "AC123"
credential = { type = "api_key", key_sid = { file = "missing" } }
[policy]
allow = ["POST /a//b", "FETCH /x"]
"#,
    );
    let err = run_refused(&path);
    for needle in [
        "bad.toml: error: listen.address",
        "upstream.default_host",
        "upstream.typo: unknown key",
        "accounts[0].sid",
        "accounts[0].credential.secret: missing",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }

    // Rule errors and unreadable secrets are found at the next stage, all at once too.
    let path = write(
        dir.path(),
        "bad2.toml",
        &format!(
            r#"
[[accounts]]
sid = "{SID}"
credential = {{ type = "api_key", key_sid = {{ file = "missing_sid" }}, secret = {{ env = "TS_DEFINITELY_UNSET" }} }}
[policy]
allow = ["POST /a//b", "FETCH /x", "/ok"]
deny = ["GET evil.example.com/x"]
"#
        ),
    );
    let err = run_refused(&path);
    for needle in [
        "policy.allow[0]: rule \"POST /a//b\", column 9",
        "policy.allow[1]: rule \"FETCH /x\", column 1",
        "policy.deny[0]",
        "accounts[0].credential.key_sid: cannot read",
        "accounts[0].credential.secret: environment variable TS_DEFINITELY_UNSET is not set",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn check_explains_decisions_with_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    let run = |method: &str, url: &str| {
        let out = sidecar_command()
            .arg("check")
            .arg("--config")
            .arg(&config)
            .args([method, url])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(
        "POST",
        &format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Messages.json"),
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("decision: allow"), "{text}");
    assert!(
        text.contains("POST /2010-04-01/Accounts/{AccountSid}/Messages.json"),
        "{text}"
    );
    assert!(
        text.contains(&format!("account:  {SID} (api_key")),
        "{text}"
    );

    let (code, text) = run(
        "POST",
        "http://127.0.0.1:8080/verify.twilio.com/v2/Services/VA1/Verifications",
    );
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("host:     verify.twilio.com (from the leading path segment)"),
        "{text}"
    );

    let (code, text) = run("GET", &format!("/2010-04-01/Accounts/{SID}/Keys.json"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("decision: deny") && text.contains("deny rule"),
        "{text}"
    );
    assert!(text.contains("70051"), "{text}");

    let (code, text) = run("GET", "/2010-04-01/Accounts/x/../Keys.json");
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("79400"), "{text}");

    let (code, text) = run("GET", "http://[bad");
    assert_eq!(code, Some(2), "{text}");
    assert!(!text.contains(SECRET));
}

#[test]
fn check_takes_parameters_for_rules_with_conditions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key_sid"), KEY_SID).unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let ctx = Ctx {
        dir: dir.path().to_path_buf(),
        stand_in: "127.0.0.1:9".parse().unwrap(),
    };
    let text = standard_config(
        &ctx,
        "",
        r#"
[policy]
allow = [{ rule = "POST /2010-04-01/Accounts/{AccountSid}/Messages.json", params = { To = ["+1*"] } }]
"#,
    )
    .replace("ca_file = \"ca.pem\"\n", "");
    let config = write(dir.path(), "sidecar.toml", &text);
    let url = format!("/2010-04-01/Accounts/{SID}/Messages.json");
    let run = |args: &[&str]| {
        let out = sidecar_command()
            .args(["check", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, text) = run(&[
        "POST",
        &url,
        "--param",
        "To=+15558675310",
        "--param",
        "Body=hi",
    ]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("params:   To, Body"), "{text}");
    assert!(text.contains("where To in [+1*]"), "{text}");
    assert!(
        !text.contains("5558675310"),
        "values are not echoed: {text}"
    );

    let (code, text) = run(&["POST", &url, "--param", "To=+8821234567"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("parameter To is not one of [+1*]"), "{text}");
    let (code, text) = run(&["POST", &url]);
    assert_eq!(code, Some(1), "an absent To is empty: {text}");
    // The URL's query counts as well.
    let (code, text) = run(&["POST", &format!("{url}?To=%2B15558675310")]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run(&["POST", &url, "--param", "nonsense"]);
    assert_eq!(code, Some(2), "{text}");
}

#[test]
fn validate_reports_everything_and_exits_accordingly() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    let (code, text, err) = validate(&config, &[]);
    assert_eq!(code, Some(0), "{text}{err}");
    assert!(
        text.contains("0 error(s), 1 warning(s); config OK"),
        "{text}"
    );
    assert!(
        text.contains("warning: accounts[1].credential.type: auth_token"),
        "{text}"
    );

    std::fs::remove_file(dir.path().join("secret")).unwrap();
    let (code, _, err) = validate(&config, &[]);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("error: accounts[0].credential.secret: cannot read"),
        "{err}"
    );
    // --skip-secrets lints without reading them.
    assert_eq!(validate(&config, &["--skip-secrets"]).0, Some(0));
}

/// Runs `dev` on free ports, then pastes the curl commands it printed into a shell.
#[test]
fn dev_mode_prints_curl_commands_that_work() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("curl is needed for this test (the dev banner prints curl commands)");
    }
    let mut child = sidecar_command()
        .args(["dev", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !banner.contains("Ctrl-C stops it.") {
        assert!(Instant::now() < deadline, "no banner: {banner}");
        let mut line = String::new();
        if stdout.read_line(&mut line).unwrap() == 0 {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("dev exited early: {banner}\n{err}");
        }
        banner.push_str(&line);
    }
    // Join continuation lines and pick out the commands.
    let joined = banner.replace("\\\n", " ");
    let commands: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .collect();
    assert!(commands.len() >= 4, "{banner}");
    let run = |cmd: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let allowed = run(commands[0]);
    let v: serde_json::Value =
        serde_json::from_str(&allowed).unwrap_or_else(|e| panic!("{e}: {allowed}"));
    assert_eq!(
        v["authorization"],
        format!("Basic {}:[redacted]", twilio_sidecar::dev::DEV_KEY_SID)
    );
    assert_eq!(v["sni"], "api.twilio.com");
    let denied: serde_json::Value = serde_json::from_str(&run(commands[1])).unwrap();
    assert_eq!(denied["code"], 70051);
    assert_eq!(denied["status"], 403);
    let verify: serde_json::Value = serde_json::from_str(&run(commands[2])).unwrap();
    assert_eq!(verify["host"], "verify.twilio.com");
    let metrics = run(commands[3]);
    assert!(
        metrics.contains("twilio_sidecar_requests_total{client=\"anonymous\",decision=\"allow\""),
        "{metrics}"
    );
    assert!(metrics.contains("decision=\"deny\""), "{metrics}");
    // Dev mode has no file to watch, so nothing may count a failed reload (the shipped alert
    // on reload failures would fire on every fresh `dev`).
    let admin = banner
        .lines()
        .find_map(|l| l.trim().strip_prefix("admin  "))
        .expect("admin URL in the banner");
    std::thread::sleep(Duration::from_millis(300));
    let all = run(&format!("curl -s {admin}/metrics"));
    assert!(
        all.contains(
            r#"twilio_sidecar_config_reloads_total{result="success",trigger="startup"} 1"#
        ),
        "{all}"
    );
    assert!(!all.contains(r#"result="failure""#), "{all}");

    // SIGTERM: graceful exit 0.
    std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            break;
        }
        assert!(Instant::now() < deadline, "dev did not exit on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A supervisor may signal as soon as it reads "listening": the handlers must be in place by
/// then, or SIGHUP kills the process and SIGTERM skips the drain (the default actions).
#[test]
fn signals_sent_the_moment_the_listeners_are_announced_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    for round in 0..10 {
        let mut child = sidecar_command()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut logs = String::new();
        while !logs.contains("proxy listening") {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("round {round}: exited before listening: {logs}");
            }
            logs.push_str(&line);
        }
        // Straight from this process: spawning `kill` takes long enough to hide the race.
        let pid = rustix::process::Pid::from_child(&child);
        for signal in [rustix::process::Signal::HUP, rustix::process::Signal::TERM] {
            rustix::process::kill_process(pid, signal).unwrap();
        }
        stderr.read_to_string(&mut logs).unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(0),
            "round {round}: not a graceful exit ({status}): {logs}"
        );
        assert!(logs.contains("SIGTERM received"), "round {round}: {logs}");
    }
}

/// The example configs in the repository stay valid.
#[test]
fn shipped_example_configs_validate() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for example in ["config/sidecar.toml", "deploy/systemd/sidecar.toml"] {
        let (code, text, err) = validate(&root.join(example), &["--skip-secrets"]);
        assert_eq!(code, Some(0), "{example}: {text}{err}");
        assert!(text.contains("0 error(s)"), "{text}");
    }
}

#[test]
fn validate_lints_the_policy_against_twilios_catalogue() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "extra.json",
        r#"{"allow": ["GET lookups.twilio.com /v2/PhoneNumber/*"]}"#,
    );
    let mut rules: Vec<String> = vec![
        "POST /2010-04-01/Accounts/{AccountSid}/Mesages.json".into(),
        "GET /v1/Services/*".into(),
        "GET /2010-04-01/Accounts/{AccountSid}/Keys/*".into(),
    ];
    rules.extend(
        (0..98).map(|i| format!("GET /2010-04-01/Accounts/{{AccountSid}}/Messages/SM{i}.json")),
    );
    let allow = rules
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(",\n");
    let path = write(
        dir.path(),
        "lint.toml",
        &format!(
            r#"
[[accounts]]
sid = "{SID}"
credential = {{ type = "auth_token", token = {{ env = "UNSET_FOR_SKIP" }} }}
[policy]
allow = [{allow}]
deny = ["* /2010-04-01/Accounts/{{AccountSid}}/Keys*"]
files = ["extra.json"]
"#
        ),
    );
    let (code, text, err) = validate(&path, &["--skip-secrets"]);
    assert_eq!(code, Some(0), "{text}{err}");
    for needle in [
        "warning: policy: 103 rules: a Twilio restricted key holds at most 100 permissions",
        "warning: policy.allow[0]: allow rule \"POST /2010-04-01/Accounts/{AccountSid}/Mesages.json\" matches no operation",
        "warning: policy.allow[1]: hostless allow rule \"GET /v1/Services/*\" matches operations on",
        "warning: policy.allow[2]: allow rule \"GET /2010-04-01/Accounts/{AccountSid}/Keys/*\" never allows anything: deny rule",
        "policy.files[0]",
        "GET lookups.twilio.com /v2/PhoneNumber/*\" matches no operation in Twilio's API catalogue on lookups.twilio.com",
        "warning: accounts[0].credential.type: auth_token",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

/// `check` states one decision, the one the proxy records, and refuses what the proxy refuses.
#[test]
fn check_agrees_with_the_proxy_on_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let config = good_config(dir.path());
    // A gateway: apps reach it by a Service name on its listen port, which it lists.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replacen("address = \"127.0.0.1:0\"", "address = \"0.0.0.0:8080\"", 1)
        .replacen(
            "names = [\"sidecar.local\"]",
            "names = [\"gateway.internal\"]",
            1,
        );
    std::fs::write(&config, text).unwrap();
    let run = |method: &str, url: &str| {
        let out = sidecar_command()
            .args(["check", "--config"])
            .arg(&config)
            .args([method, url])
            .output()
            .unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // A foreign host, as an HTTP proxy client sends it: not an open proxy (79403).
    let (code, text) = run("GET", "http://evil.example.com/foo");
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("decision: refused: 403 Forbidden (code 79403)"),
        "{text}"
    );
    // A URL on the sidecar's own port is the origin-form request an SDK sends there.
    let (code, text) = run(
        "GET",
        &format!("http://gateway.internal:8080/2010-04-01/Accounts/{SID}/Messages.json"),
    );
    assert_eq!(code, Some(0), "{text}");
    // A name it does not list is what a DNS-rebinding page sends: refused as the proxy does.
    let (code, text) = run(
        "GET",
        &format!("http://rebind.evil.example:8080/2010-04-01/Accounts/{SID}/Messages.json"),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("(code 79407)"), "{text}");
    // The policy allows any account's recordings, but the account is not configured: one
    // decision, refused, with the proxy's code.
    let other = "AC99999999999999999999999999999999";
    let (code, text) = run(
        "GET",
        &format!("https://api.twilio.com/2010-04-01/Accounts/{other}/Recordings.json"),
    );
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(text.matches("decision:").count(), 1, "{text}");
    assert!(
        text.contains("decision: refused: 403 Forbidden (code 79404)"),
        "{text}"
    );
    assert!(!text.contains("decision: allow"), "{text}");
    // Where the host came from is said on denials too.
    let (code, text) = run(
        "GET",
        &format!("https://api.twilio.com/2010-04-01/Accounts/{SID}/Keys.json"),
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("host:     api.twilio.com (from the absolute URL)"),
        "{text}"
    );
}

/// A typo'd placeholder is an error naming the likely one, and a bad account SID does not hide
/// the policy's errors: validate reports both in one run.
#[test]
fn validate_reports_a_bad_account_and_a_bad_rule_together() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[[accounts]]
sid = "AC-not-a-sid"
credential = {{ type = "api_key", key_sid = {{ file = "k" }}, secret = {{ file = "s" }} }}
[[accounts]]
sid = "{SID}"
default = true
credential = {{ type = "api_key", key_sid = {{ file = "k" }}, secret = {{ file = "s" }} }}
[policy]
allow = ["POST /2010-04-01/Accounts/{{AcountSid}}/Messages.json", "GET /v2/Services/*/nope%zz"]
"#
    );
    let config = write(dir.path(), "sidecar.toml", &text);
    let (code, out, err) = validate(&config, &[]);
    assert_eq!(code, Some(64), "{out}{err}");
    for needle in [
        "accounts[0].sid: \"AC-not-a-sid\" is not an account SID",
        "policy.allow[0]",
        "did you mean {AccountSid}",
        "policy.allow[1]",
        "3 error(s)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

/// `dev` on a busy port: one message, naming the flag the address came from.
#[test]
fn dev_on_a_busy_port_says_so_once_naming_the_flag() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let out = sidecar_command()
        .args(["dev", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin", "127.0.0.1:0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("cannot listen").count(), 1, "{err}");
    assert!(err.contains("(--listen)"), "{err}");
    assert!(!err.contains("listen.address"), "{err}");
}
