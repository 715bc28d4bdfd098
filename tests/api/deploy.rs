//! The deployment files as written: the Caddyfile that Caddy accepts in every shape the
//! README describes.

use std::process::Command;

/// `caddy validate` on the repository's Caddyfile, with the environment given.
fn validate_caddyfile(env: &[(&str, &str)]) -> std::process::Output {
    let dir = std::env::temp_dir()
        .join("wirechat-tests")
        .join(format!("caddy-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("caddy dir");
    let mut command = Command::new("caddy");
    command
        .args(["validate", "--adapter", "caddyfile", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Caddyfile"))
        .env_remove("WIRECHAT_UPSTREAMS")
        .env_remove("WIRECHAT_SITE_ADDRESS")
        .env("HOME", &dir)
        .env("XDG_DATA_HOME", &dir)
        .env("XDG_CONFIG_HOME", &dir)
        .envs(env.iter().copied());
    let output = command.output().expect("caddy (apt-get install caddy)");
    let _ = std::fs::remove_dir_all(&dir);
    output
}

/// The compose file's defaults, the loopback nodes of deploy/cluster.sh, and a domain
/// served over HTTPS all make a configuration Caddy accepts, with active health checks
/// on readiness.
#[test]
fn caddy_accepts_the_caddyfile_as_deployed() {
    for env in [
        &[][..],
        &[
            (
                "WIRECHAT_UPSTREAMS",
                "127.0.0.1:8001 127.0.0.1:8002 127.0.0.1:8003",
            ),
            ("WIRECHAT_SITE_ADDRESS", ":8080"),
        ][..],
        &[("WIRECHAT_SITE_ADDRESS", "chat.example.com")][..],
    ] {
        let output = validate_caddyfile(env);
        assert!(
            output.status.success(),
            "{env:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let adapted = Command::new("caddy")
        .args(["adapt", "--adapter", "caddyfile", "--config"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/Caddyfile"))
        .env("WIRECHAT_UPSTREAMS", "127.0.0.1:8001 127.0.0.1:8002")
        .output()
        .expect("caddy adapt");
    let json: serde_json::Value =
        serde_json::from_slice(&adapted.stdout).expect("caddy adapt prints JSON");
    let routes = &json["apps"]["http"]["servers"]["srv0"]["routes"];
    let proxy = routes
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["handle"].as_array().into_iter().flatten())
        .find(|h| h["handler"] == "reverse_proxy")
        .expect("a reverse_proxy handler");
    assert_eq!(
        proxy["upstreams"],
        serde_json::json!([{ "dial": "127.0.0.1:8001" }, { "dial": "127.0.0.1:8002" }]),
        "one static upstream per node named"
    );
    assert_eq!(proxy["health_checks"]["active"]["uri"], "/readyz");
    assert!(proxy["load_balancing"]["try_duration"].as_u64() > Some(0));
    assert!(proxy["health_checks"]["passive"]["fail_duration"].as_u64() > Some(0));
}
