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

/// The Dockerfile's instructions, one string each: continuation lines joined, comments
/// and blank lines dropped.
fn dockerfile() -> Vec<String> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in repository_file("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                instructions.push(std::mem::take(&mut current));
            }
        }
    }
    instructions
}

/// Where the dependency build is: the first `RUN` that runs `cargo build`.
fn dependency_build(instructions: &[String]) -> usize {
    instructions
        .iter()
        .position(|i| i.starts_with("RUN") && i.contains("cargo build"))
        .expect("a RUN with cargo build")
}

/// What the `COPY` instructions in `instructions` copy from the build context.
fn copied(instructions: &[String]) -> Vec<String> {
    instructions
        .iter()
        .filter(|i| i.starts_with("COPY ") && !i.contains("--from"))
        .flat_map(|i| {
            let words: Vec<&str> = i.split_whitespace().skip(1).collect();
            words[..words.len() - 1]
                .iter()
                .map(|w| w.to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The dependency layer is built from the manifests, the lock file and the patched crates
/// alone, before any source is copied, so a code change reuses it; the sources and what
/// they build in come after; the runtime image has no colour in its logs and carries the
/// OCI labels. (Building the image takes far longer than a test may: this checks the
/// Dockerfile's structure, and the next test its first step.)
#[test]
fn the_dockerfile_caches_dependencies_and_labels_the_image() {
    let instructions = dockerfile();
    assert!(
        !instructions
            .iter()
            .any(|i| i.starts_with("COPY . ") || i.starts_with("ADD . ")),
        "the whole context is never copied"
    );
    let deps = dependency_build(&instructions);
    let before = copied(&instructions[..deps]);
    for needed in ["Cargo.toml", "Cargo.lock", "loadtest/Cargo.toml", "vendor"] {
        assert!(
            before.iter().any(|c| c == needed),
            "{needed} before {before:?}"
        );
    }
    for source in &before {
        assert!(
            source.ends_with("Cargo.toml") || source == "Cargo.lock" || source == "vendor",
            "{source} is copied before the dependency build, so editing it rebuilds them"
        );
    }
    // Every patched crate is in what the dependency build sees.
    for line in repository_file("Cargo.toml").lines() {
        if let Some(at) = line.find("{ path = \"") {
            let path = &line[at + 10..];
            let path = &path[..path.find('"').expect("a closing quote")];
            assert!(
                before.iter().any(|c| path.starts_with(c.as_str())),
                "{path} is not copied before the dependency build"
            );
        }
    }
    assert!(
        instructions[deps].contains(".fingerprint/wirechat-"),
        "the stand-ins' build is forgotten, so the real sources are compiled"
    );
    let real_build = deps + 1 + dependency_build(&instructions[deps + 1..]);
    assert!(instructions[real_build].contains("cargo build --release --locked"));
    let after = copied(&instructions[deps..real_build]);
    for needed in ["src", "migrations", "static"] {
        assert!(after.iter().any(|c| c == needed), "{needed} in {after:?}");
    }

    let runtime = instructions
        .iter()
        .rposition(|i| i.starts_with("FROM "))
        .expect("a runtime stage");
    let runtime = &instructions[runtime..];
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("ENV ") && i.split_whitespace().any(|w| w == "NO_COLOR=1")),
        "NO_COLOR=1 in the runtime image"
    );
    let labels: String = runtime
        .iter()
        .filter(|i| i.starts_with("LABEL "))
        .cloned()
        .collect();
    for label in [
        "title",
        "description",
        "version",
        "revision",
        "source",
        "licenses",
    ] {
        assert!(
            labels.contains(&format!("org.opencontainers.image.{label}=")),
            "label {label}"
        );
    }
}

/// The dependency step works on what it is given: the files copied before it and the
/// stand-in sources its RUN writes make a workspace cargo resolves against the lock file
/// unchanged (`--locked`), with every patched crate found.
#[test]
fn the_dockerfile_dependency_step_resolves_with_only_what_it_copies() {
    let instructions = dockerfile();
    let deps = dependency_build(&instructions);
    let dir = std::env::temp_dir()
        .join("wirechat-tests")
        .join(format!("docker-{}", uuid::Uuid::new_v4().simple()));
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for source in copied(&instructions[..deps]) {
        copy_tree(&repo.join(&source), &dir.join(&source));
    }
    // The RUN's commands up to the build: the stand-in sources.
    let run = instructions[deps].trim_start_matches("RUN").trim();
    let stand_ins = run[..run.find("cargo build").expect("cargo build")]
        .trim()
        .trim_end_matches("&&");
    let status = Command::new("sh")
        .args(["-c", stand_ins])
        .current_dir(&dir)
        .status()
        .expect("sh");
    assert!(status.success(), "{stand_ins}");
    // For this machine's platform only: the crates other platforms need are not
    // downloaded here, and --offline cannot fetch them.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let rustc = String::from_utf8_lossy(&rustc.stdout);
    let host = rustc
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host");
    let metadata = Command::new("cargo")
        .args(["metadata", "--locked", "--offline", "--format-version", "1"])
        .args(["--filter-platform", host])
        .current_dir(&dir)
        .output()
        .expect("cargo metadata");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        metadata.status.success(),
        "{}",
        String::from_utf8_lossy(&metadata.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).expect("cargo metadata prints JSON");
    let targets: Vec<&str> = metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| p["name"] == "wirechat")
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(targets.contains(&"wirechat"), "{targets:?}");
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).expect("create a directory");
        for entry in std::fs::read_dir(from).expect("read a directory") {
            let entry = entry.expect("a directory entry");
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("create a directory");
        }
        std::fs::copy(from, to).expect("copy a file");
    }
}

/// Serving a domain: the HTTPS override publishes ports 80 and 443, names the domain as
/// Caddy's site (which turns its automatic HTTPS on; `caddy validate` accepts that shape
/// above), marks every node's cookie Secure, and Caddy keeps its certificates in a volume.
#[test]
fn the_https_override_serves_a_domain_with_secure_cookies() {
    let compose = repository_file("docker-compose.yaml");
    let https = repository_file("docker-compose.https.yaml");
    assert!(
        compose.contains("- caddy-data:/data\n"),
        "certificates kept"
    );
    for port in ["\"80:80\"", "\"443:443\""] {
        assert!(https.contains(port), "{port} published");
    }
    assert!(https.contains("WIRECHAT_SITE_ADDRESS: ${WIRECHAT_DOMAIN:?"));
    let nodes: Vec<&str> = compose
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|name| name.starts_with("app"))
        .collect();
    assert_eq!(nodes, ["app1", "app2", "app3"]);
    for node in nodes {
        // The node's lines: from its name to the next line indented no deeper.
        let section: String = https
            .lines()
            .skip_while(|l| *l != format!("  {node}:"))
            .skip(1)
            .take_while(|l| l.is_empty() || l.starts_with("   "))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            section.contains("WIRECHAT_SECURE_COOKIES: \"true\""),
            "{node}: {section}"
        );
    }
}

/// Checks that an override gives each node of the compose file its environment and
/// dependencies from the anchors named, on top of the base file's.
fn assert_every_node_moved(compose: &str, override_file: &str, env: &str, depends: &str) {
    for node in ["app1", "app2", "app3"] {
        assert!(
            compose.contains(&format!("\n  {node}:\n")),
            "{node} in compose"
        );
        assert!(
            override_file.contains(&format!(
                "\n  {node}:\n    environment: *{env}\n    depends_on: *{depends}\n"
            )),
            "{node} takes {env} and {depends}"
        );
    }
}

/// The lines of the shell here-document that `opener` (`<<'CONF'`) starts in a compose
/// file's command, up to its `CONF`, without their indentation.
fn here_document<'a>(compose: &'a str, opener: &str) -> Vec<&'a str> {
    let start = compose
        .find(&format!("{opener}\n"))
        .unwrap_or_else(|| panic!("a here-document {opener}"))
        + opener.len()
        + 1;
    let end = start + compose[start..].find("CONF\n").expect("its end");
    compose[start..end].lines().map(str::trim).collect()
}

/// The Sentinel override turns every node of the compose file from REDIS_URL to its
/// sentinels, and the sentinels' configuration it writes runs: given a master on a free
/// port in place of the `redis` service, three sentinels started from it agree which
/// server is the master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sentinel_override_moves_every_node_to_sentinels_that_run() {
    let compose = repository_file("docker-compose.yaml");
    let sentinel = repository_file("docker-compose.sentinel.yaml");
    assert!(sentinel.contains("  REDIS_URL: \"\"\n"));
    assert!(
        sentinel.contains(
            "  WIRECHAT_REDIS_SENTINEL: sentinel1:26379,sentinel2:26379,sentinel3:26379\n"
        )
    );
    assert!(sentinel.contains("  WIRECHAT_REDIS_SENTINEL_MASTER: wirechat\n"));
    assert_every_node_moved(
        &compose,
        &sentinel,
        "node-sentinel-env",
        "node-sentinel-depends",
    );
    for service in ["sentinel1", "sentinel2", "sentinel3"] {
        assert!(
            sentinel.contains(&format!("\n  {service}: *sentinel\n")),
            "{service}"
        );
    }
    assert!(
        compose.contains("\n  redis:\n"),
        "the master the sentinels watch"
    );

    // The configuration the sentinels write, with the master on a free port.
    let conf = here_document(&sentinel, "<<'CONF'");
    assert!(
        conf.contains(&"sentinel monitor wirechat redis 6379 2"),
        "{conf:?}"
    );
    let master = crate::process::OwnRedis::start(crate::process::free_port()).await;
    let dir = std::env::temp_dir().join("wirechat-tests").join(format!(
        "compose-sentinel-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a directory");
    let mut sentinels = Vec::new();
    for _ in 0..3 {
        let port = crate::process::free_port();
        let text: String = conf
            .iter()
            .map(|line| {
                let line = line.replace("port 26379", &format!("port {port}"));
                line.replace("redis 6379", &format!("127.0.0.1 {}", master.port)) + "\n"
            })
            .collect();
        let file = dir.join(format!("sentinel-{port}.conf"));
        std::fs::write(&file, text).expect("the configuration");
        let process = crate::process::sentinel_server(&file).await;
        sentinels.push((process, port));
    }
    let ask = deadpool_redis::redis::cmd("SENTINEL")
        .arg("get-master-addr-by-name")
        .arg("wirechat")
        .clone();
    for (_, port) in &sentinels {
        let (_, named): (String, u16) = crate::process::OwnCluster::ask(*port, &ask)
            .await
            .expect("the sentinel names the master");
        assert_eq!(named, master.port);
    }
    drop(sentinels);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The shell script in the first literal block (`- |`) after `from` in a compose file,
/// without its indentation, and with `$$` read as compose reads it: one `$`.
fn script_after(compose: &str, from: &str) -> String {
    let after = &compose[compose.find(from).unwrap_or_else(|| panic!("{from}"))..];
    let block = &after[after.find("- |\n").expect("a literal block") + 4..];
    let indent = block.len() - block.trim_start_matches(' ').len();
    block
        .lines()
        .take_while(|line| line.is_empty() || line.starts_with(&" ".repeat(indent)))
        .map(|line| line.get(indent..).unwrap_or("").replace("$$", "$") + "\n")
        .collect()
}

/// The Redis Cluster override turns every node of the compose file from REDIS_URL to six
/// servers in cluster mode, and what it runs works: six servers started from the
/// configuration it writes (on free loopback ports, with 127.0.0.1 for their host names)
/// are made one cluster by its one-shot script, which run again leaves the cluster as it
/// is and succeeds; and two nodes given its settings chat across the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_override_moves_every_node_to_a_cluster_that_runs() {
    let compose = repository_file("docker-compose.yaml");
    let cluster = repository_file("docker-compose.cluster.yaml");
    let servers = [
        "redis-1", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6",
    ];
    let addresses = servers.map(|server| format!("{server}:6379")).join(",");
    assert!(cluster.contains("  REDIS_URL: \"\"\n"));
    assert!(cluster.contains(&format!("  WIRECHAT_REDIS_CLUSTER: {addresses}\n")));
    assert_every_node_moved(
        &compose,
        &cluster,
        "node-cluster-env",
        "node-cluster-depends",
    );
    assert!(
        cluster
            .contains("\n  redis-cluster-create:\n    condition: service_completed_successfully\n"),
        "the nodes wait for the cluster to be made"
    );
    for server in servers {
        assert!(
            cluster.contains(&format!(
                "\n  {server}:\n    <<: *redis-cluster-node\n    hostname: {server}\n"
            )),
            "{server}"
        );
        assert!(
            cluster.contains(&format!(
                "      {server}:\n        condition: service_healthy\n"
            )),
            "the cluster is made once {server} is healthy"
        );
    }

    // The servers, from the configuration each writes: a free port of their own, and
    // loopback as the host name they announce.
    let conf = here_document(&cluster, "<<CONF");
    for line in [
        "cluster-enabled yes",
        // Other containers connect without a password, and the README's failover takes
        // about five seconds.
        "protected-mode no",
        "cluster-node-timeout 5000",
        "cluster-announce-hostname $$(hostname)",
        "cluster-preferred-endpoint-type hostname",
    ] {
        assert!(conf.contains(&line), "{line}: {conf:?}");
    }
    let dir = std::env::temp_dir()
        .join("wirechat-tests")
        .join(format!("compose-cluster-{}", uuid::Uuid::new_v4().simple()));
    let mut running = Vec::new();
    let mut ports = Vec::new();
    for server in servers {
        let port = crate::process::free_port_with_bus();
        let text: String = conf
            .iter()
            .map(|line| {
                let line = line.replace("port 6379", &format!("port {port}"));
                line.replace("$$(hostname)", "127.0.0.1") + "\n"
            })
            .collect();
        let server_dir = dir.join(server);
        std::fs::create_dir_all(&server_dir).expect("a directory");
        let file = server_dir.join("redis.conf");
        std::fs::write(&file, text).expect("the configuration");
        let process = crate::process::redis_server(&[
            &file.display().to_string(),
            "--dir",
            &server_dir.display().to_string(),
        ])
        .await;
        running.push(process);
        ports.push(port);
    }
    let on_loopback = |text: &str| {
        servers
            .iter()
            .zip(&ports)
            .fold(text.to_owned(), |text, (server, port)| {
                text.replace(&format!("{server}:6379"), &format!("127.0.0.1:{port}"))
            })
    };

    // The one-shot service's script makes them one cluster, the first three servers its
    // masters; run again (a later `up`), it finds the cluster made, leaves it so, and
    // succeeds.
    let script = script_after(&cluster, "\n  redis-cluster-create:\n");
    assert!(
        script.contains(&format!("for server in {};", addresses.replace(',', " ")))
            && script.contains("redis-cli --cluster create $addresses --cluster-replicas 1"),
        "{script}"
    );
    let script = on_loopback(&script);
    let info = deadpool_redis::redis::cmd("CLUSTER").arg("INFO").clone();
    let replication = deadpool_redis::redis::cmd("INFO")
        .arg("replication")
        .clone();
    for run in ["the first run", "the second run"] {
        let made = Command::new("sh")
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("sh runs");
        assert!(
            made.status.success(),
            "{run}: {}{}",
            String::from_utf8_lossy(&made.stdout),
            String::from_utf8_lossy(&made.stderr)
        );
        for (at, port) in ports.iter().enumerate() {
            crate::process::poll("every server says the cluster is whole", || async {
                crate::process::OwnCluster::ask::<String>(*port, &info)
                    .await
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            })
            .await;
            let role: String = crate::process::OwnCluster::ask(*port, &replication)
                .await
                .expect("INFO replication");
            let wanted = if at < 3 { "role:master" } else { "role:slave" };
            assert!(role.contains(wanted), "{run}: {}: {role}", servers[at]);
        }
    }

    // Two nodes with the override's settings chat across the cluster.
    let args = vec![
        "--redis-url".to_owned(),
        String::new(),
        "--redis-cluster".to_owned(),
        on_loopback(&addresses),
        "--redis-prefix".to_owned(),
        crate::helpers::fresh_prefix(),
    ];
    crate::helpers::two_nodes_carry(args, "sent over the compose cluster").await;
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
