//! Child processes for tests: wirechat nodes, redis-server, Caddy, each started and
//! waited for by reading the line that says it is ready, and killed when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::helpers::PATIENCE;

/// Which output of a child process says it is ready.
#[derive(Clone, Copy)]
pub enum Output {
    Stdout,
    Stderr,
}

/// A child process, killed (SIGKILL) when dropped.
pub struct Process {
    pub child: Child,
    name: String,
}

impl Process {
    /// Starts `command` and waits for the first line on `output` that `ready` accepts,
    /// returning what it made of it. That output is read to its end, so the child never
    /// blocks on a full pipe (and is echoed with TEST_LOG); the other one is discarded.
    pub async fn start<T: Send + 'static>(
        mut command: Command,
        name: &str,
        output: Output,
        ready: impl Fn(&str) -> Option<T> + Send + 'static,
    ) -> (Process, T) {
        let (stdout, stderr) = match output {
            Output::Stdout => (Stdio::piped(), Stdio::null()),
            Output::Stderr => (Stdio::null(), Stdio::piped()),
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        let stream: Box<dyn std::io::Read + Send> = match output {
            Output::Stdout => Box::new(child.stdout.take().expect("stdout")),
            Output::Stderr => Box::new(child.stderr.take().expect("stderr")),
        };
        let (tx, rx) = oneshot::channel();
        let echo = std::env::var_os("TEST_LOG").is_some();
        let label = name.to_owned();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[{label}] {line}");
                }
                if tx.is_some()
                    && let Some(value) = ready(&line)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(value);
                }
            }
        });
        let value = tokio::time::timeout(PATIENCE, rx)
            .await
            .unwrap_or_else(|_| panic!("{name} did not start"))
            .unwrap_or_else(|_| panic!("{name} exited before it was ready"));
        (
            Process {
                child,
                name: name.to_owned(),
            },
            value,
        )
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit by itself.
    pub async fn terminate(&mut self) {
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + PATIENCE;
        while self.child.try_wait().expect("try_wait").is_none() {
            assert!(
                Instant::now() < deadline,
                "{} ignored SIGTERM for {PATIENCE:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
