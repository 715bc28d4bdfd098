//! The binary as an operator starts it: its help, its logs, and what it says when it
//! cannot start.

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{Backend, PATIENCE, fresh_database};
use crate::process::{Output, Process};

/// Settings that may hold a credential, each set to a value with a password in it.
const SECRETS: [(&str, &str, &str); 3] = [
    (
        "DATABASE_URL",
        "postgres://wirechat:pg-s3cr3t@db.internal/wirechat",
        "pg-s3cr3t",
    ),
    (
        "REDIS_URL",
        "redis://:redis-s3cr3t@cache.internal",
        "redis-s3cr3t",
    ),
    (
        "WIRECHAT_SECRET",
        "cookie-s3cr3t-cookie-s3cr3t-cookie-s3cr3t",
        "cookie-s3cr3t",
    ),
];

#[test]
fn help_names_every_setting_but_shows_no_secret() {
    for args in [&["--help"][..], &["serve", "--help"]] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wirechat"));
        command.args(args);
        for (name, value, _) in SECRETS {
            command.env(name, value);
        }
        let output = command.output().expect("run wirechat --help");
        assert!(output.status.success(), "{args:?}: {output:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for (name, _, password) in SECRETS {
            assert!(
                help.contains(&format!("env: {name}")),
                "{args:?} documents {name}:\n{help}"
            );
            assert!(
                !help.contains(password),
                "{args:?} shows {name}'s value:\n{help}"
            );
        }
    }
}

/// Starts a node with `envs` and returns its log lines up to its start line.
async fn start_line_and_before(database_url: &str, envs: &[(&str, &str)]) -> Vec<String> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wirechat"));
    command
        .args(["--addr", "127.0.0.1:0", "--database-url", database_url])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "wirechat=info")
        .envs(envs.iter().copied());
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let (_node, ()) = Process::start(command, "node", Output::Stdout, move |line| {
        let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.push(line.to_owned());
        line.contains("listening on").then_some(())
    })
    .await;
    lines.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

#[tokio::test]
async fn json_logs_are_one_object_a_line_and_start_with_version_and_settings() {
    let url = fresh_database(Backend::Sqlite).await;
    let (secret_name, secret, password) = SECRETS[2];
    let lines = start_line_and_before(
        &url,
        &[("WIRECHAT_LOG_FORMAT", "json"), (secret_name, secret)],
    )
    .await;
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let start = parsed.last().expect("a start line");
    let fields = &start["fields"];
    assert_eq!(fields["version"], env!("CARGO_PKG_VERSION"), "{start}");
    let settings = fields["settings"]
        .as_str()
        .expect("settings in the start line");
    assert!(settings.contains("max_message_chars: 4000"), "{settings}");
    assert!(settings.contains("secret: Some(\"***\")"), "{settings}");
    for line in &lines {
        assert!(!line.contains(password), "a secret in the logs: {line}");
    }
}

#[tokio::test]
async fn text_logs_on_a_pipe_have_no_colour_and_no_password() {
    // PostgreSQL here trusts local connections and ignores the password, so the URL can
    // carry one and the node still starts.
    let url =
        fresh_database(Backend::Postgres)
            .await
            .replacen("postgres@", "postgres:pg-s3cr3t@", 1);
    let lines = start_line_and_before(&url, &[("WIRECHAT_LOG_FORMAT", "text")]).await;
    let start = lines.last().expect("a start line");
    assert!(start.contains(env!("CARGO_PKG_VERSION")), "{start}");
    assert!(start.contains("postgres:***@127.0.0.1"), "{start}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "colour codes on a pipe: {line:?}");
        assert!(
            !line.contains("pg-s3cr3t"),
            "a password in the logs: {line}"
        );
    }
}

#[test]
fn an_unknown_log_format_is_refused_with_the_choices() {
    let output = Command::new(env!("CARGO_BIN_EXE_wirechat"))
        .args(["--log-format", "xml", "--addr", "127.0.0.1:0"])
        .output()
        .expect("run wirechat");
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("xml") && said.contains("text") && said.contains("json"),
        "{said}"
    );
}

/// Runs the binary to its exit (bounded by `PATIENCE`), in a directory of its own so a URL
/// wrongly taken for a file name leaves nothing behind; returns whether it succeeded, what
/// it said on standard error, and how long it took.
fn run_to_exit(args: &[&str]) -> (bool, String, Duration) {
    let dir = std::env::temp_dir()
        .join("wirechat-tests")
        .join(format!("run-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a directory of its own");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wirechat"))
        .args(args)
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wirechat");
    let mut stderr = child.stderr.take().expect("stderr");
    let said = std::thread::spawn(move || {
        let mut said = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
        said
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            panic!("wirechat {args:?} still running after {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    (status.success(), said.join().expect("stderr read"), elapsed)
}

#[test]
fn an_unknown_database_scheme_is_refused_with_the_forms_accepted() {
    for (url, scheme) in [
        ("mysql://wirechat:my-s3cr3t@127.0.0.1/wirechat", "mysql"),
        ("http://127.0.0.1/wirechat", "http"),
    ] {
        let (ok, said, _) = run_to_exit(&["--addr", "127.0.0.1:0", "--database-url", url]);
        assert!(!ok, "{url} was accepted");
        assert!(said.contains(&format!("scheme `{scheme}`")), "{said}");
        assert!(
            said.contains("sqlite://") && said.contains("postgres://"),
            "{said}"
        );
        assert!(!said.contains("my-s3cr3t"), "{said}");
    }
}

#[test]
fn a_refused_postgresql_fails_fast_saying_where() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
        listener.local_addr().expect("its address").port()
    };
    let url = format!("postgres://postgres@127.0.0.1:{port}/wirechat");
    let (ok, said, elapsed) = run_to_exit(&["--addr", "127.0.0.1:0", "--database-url", &url]);
    assert!(!ok, "started without a database");
    assert!(said.contains("connection refused"), "{said}");
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");
    // Not a performance bound: the pool, left to itself, retries for its whole 10 s
    // acquire timeout and then says only "pool timed out".
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}: {said}");
}
