//! The binary as an operator starts it: its help, its logs, and what it says when it
//! cannot start.

use std::process::Command;

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
