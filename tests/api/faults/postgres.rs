//! PostgreSQL servers of a test's own, to stop and start.

use super::*;

/// A PostgreSQL server of the test's own (initdb + pg_ctl from the installed PostgreSQL) on
/// a free port, with its data under the temp dir, so it can be stopped without touching the
/// shared instance on 5432. Stopped (immediately) and removed when dropped.
pub(crate) struct OwnPostgres {
    pub(super) ctl: PgCtl,
}

/// Runs PostgreSQL's tools for one instance. PostgreSQL refuses to run as root, so under
/// root they run as the `postgres` user, which then owns the instance's directory.
#[derive(Clone)]
pub(super) struct PgCtl {
    pub(super) dir: PathBuf,
    pub(super) port: u16,
    pub(super) bin: PathBuf,
    pub(super) owner: Option<(u32, u32)>,
    /// More server settings (`-c name=value …`).
    pub(super) settings: String,
}

impl PgCtl {
    pub(super) fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut command = Command::new(self.bin.join(tool));
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = self.owner {
            command.uid(uid).gid(gid);
        }
        command
    }

    pub(super) fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool, args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub(super) fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off {}",
            self.port,
            self.dir.display(),
            self.settings
        );
        let args = ["start", "-w", "-D", "data", "-l", "log", "-o", &options];
        let output = self
            .command("pg_ctl", &args)
            .output()
            .unwrap_or_else(|e| panic!("running pg_ctl: {e}"));
        // The server's own log says why it did not start; it goes with the directory.
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        assert!(
            output.status.success(),
            "pg_ctl {args:?}: {}\nserver log:\n{log}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    pub(super) fn stop(&self, mode: &str) {
        self.run("pg_ctl", &["stop", "-w", "-D", "data", "-m", mode]);
    }
}

impl OwnPostgres {
    pub(super) async fn start() -> OwnPostgres {
        OwnPostgres::start_with(None).await
    }

    /// A server that takes connections over TLS only, with `certificate` and `key` (PEM).
    pub(crate) async fn start_tls(certificate: &str, key: &str) -> OwnPostgres {
        OwnPostgres::start_with(Some((certificate.to_owned(), key.to_owned()))).await
    }

    async fn start_with(tls: Option<(String, String)>) -> OwnPostgres {
        tokio::task::spawn_blocking(move || {
            let dir = std::env::temp_dir()
                .join("wirechat-tests")
                .join(format!("pg-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&dir).expect("postgres dir");
            // SAFETY: geteuid has no preconditions.
            let owner = (unsafe { libc::geteuid() } == 0).then(postgres_user);
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown");
            }
            let ctl = PgCtl {
                dir,
                port: free_port(),
                bin: postgres_bin(),
                owner,
                settings: if tls.is_some() {
                    "-c ssl=on".into()
                } else {
                    String::new()
                },
            };
            // From here on, Drop cleans up whatever was made.
            let pg = OwnPostgres { ctl };
            pg.ctl.run(
                "initdb",
                &[
                    "-D",
                    "data",
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
            );
            if let Some((certificate, key)) = &tls {
                let data = pg.ctl.dir.join("data");
                for (name, pem) in [("server.crt", certificate), ("server.key", key)] {
                    let path = data.join(name);
                    std::fs::write(&path, pem).expect("writing the server's certificate");
                    std::fs::set_permissions(
                        &path,
                        std::os::unix::fs::PermissionsExt::from_mode(0o600),
                    )
                    .expect("chmod");
                    if let Some((uid, gid)) = owner {
                        std::os::unix::fs::chown(&path, Some(uid), Some(gid)).expect("chown");
                    }
                }
                // Over TCP, TLS or nothing.
                std::fs::write(
                    data.join("pg_hba.conf"),
                    "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
                )
                .expect("writing pg_hba.conf");
            }
            pg.ctl.start();
            pg
        })
        .await
        .expect("starting PostgreSQL")
    }

    /// Stops the server fast: open sessions end and their transactions roll back.
    pub(super) async fn stop(&self) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.stop("fast"))
            .await
            .expect("stopping PostgreSQL");
    }

    /// Starts it again on the same port and data.
    pub(super) async fn restart(&self) {
        let ctl = self.ctl.clone();
        tokio::task::spawn_blocking(move || ctl.start())
            .await
            .expect("restarting PostgreSQL");
    }

    pub(crate) fn port(&self) -> u16 {
        self.ctl.port
    }

    pub(super) async fn fresh_database(&self) -> String {
        use sqlx::Connection;
        let admin_url = format!("postgres://postgres@127.0.0.1:{}/postgres", self.ctl.port);
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .expect("own PostgreSQL answers");
        sqlx::Executor::execute(&mut admin, "CREATE DATABASE wirechat")
            .await
            .expect("create database");
        format!("postgres://postgres@127.0.0.1:{}/wirechat", self.ctl.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .ctl
            .command("pg_ctl", &["stop", "-w", "-D", "data", "-m", "immediate"])
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.ctl.dir);
    }
}

/// The newest installed PostgreSQL's bin directory (Debian keeps them versioned).
pub(super) fn postgres_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL installed under /usr/lib/postgresql")
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().expect("an installed PostgreSQL with pg_ctl").1
}

/// The `postgres` user's uid and gid.
pub(super) fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&"postgres"))
                .then(|| Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?)))
                .flatten()
        })
        .expect("a postgres user to run PostgreSQL as")
}
