//! The deployment files as written: the Caddyfile that Caddy accepts in every shape the
//! README describes, and the monitoring files that fit the nodes and the compose file.

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

/// The repository file at `path`.
fn repository_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// The metric names (`wirechat_…`, `process_…`) an expression uses.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (at, _) in expr.match_indices(['w', 'p']) {
        let before = expr[..at].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &expr[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        if word.starts_with("wirechat_") || word.starts_with("process_") {
            names.push(word.to_owned());
        }
    }
    names
}

/// Every series the Grafana dashboard draws is one a node serves, so no panel stays
/// empty for a misspelt name; and its datasource is the one provisioned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_draws_only_series_a_node_serves() {
    let app = crate::helpers::TestApp::spawn(crate::helpers::Backend::Sqlite).await;
    let served = reqwest::get(app.url("/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    let dashboard: serde_json::Value =
        serde_json::from_str(&repository_file("deploy/grafana/dashboards/wirechat.json"))
            .expect("the dashboard is JSON");
    let datasources = repository_file("deploy/grafana/provisioning/datasources/prometheus.yml");
    let mut drawn = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let uid = target["datasource"]["uid"].as_str().expect("a datasource");
            assert!(datasources.contains(&format!("uid: {uid}\n")), "{uid}");
            for name in metric_names(target["expr"].as_str().expect("an expression")) {
                assert!(
                    served.lines().any(|line| line.starts_with(&name)),
                    "panel {:?} draws {name}, which /metrics does not serve",
                    panel["title"]
                );
                drawn += 1;
            }
        }
    }
    assert!(drawn >= 10, "{drawn} series drawn");
}

/// Prometheus scrapes each node of the compose file where its metrics listener is, and
/// the monitoring profile mounts the files this repository ships.
#[test]
fn prometheus_scrapes_every_node_of_the_compose_file() {
    let compose = repository_file("docker-compose.yaml");
    let prometheus = repository_file("deploy/prometheus.yml");
    assert!(compose.contains("WIRECHAT_METRICS_ADDR: 0.0.0.0:9100\n"));
    for node in ["app1", "app2", "app3"] {
        assert!(
            compose.contains(&format!("\n  {node}:\n")),
            "{node} in compose"
        );
        assert!(
            prometheus.contains(&format!("- {node}:9100\n")),
            "{node} scraped"
        );
    }
    for mounted in [
        "./deploy/prometheus.yml:",
        "./deploy/grafana/provisioning:",
        "./deploy/grafana/dashboards:",
    ] {
        assert!(compose.contains(mounted), "{mounted} mounted");
        let path = mounted.trim_start_matches("./").trim_end_matches(':');
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join(path)
                .exists(),
            "{path}"
        );
    }
    assert_eq!(compose.matches("profiles: [monitoring]").count(), 2);
}
