//! Nodes on Redis Sentinel: how they are told where the sentinels are. The failover itself,
//! under traffic, is `faults::redis_sentinel_master_fails_over`.

use crate::helpers::{Backend, fresh_database, refused_at_start};
use crate::process::{OwnSentinel, SENTINEL_MASTER, free_port, redis_server};

/// Sentinels named as one server, a server named as a sentinel, a master the sentinels do
/// not watch, half of the two settings, and a Redis that turns the password away are each
/// refused at start, saying what to do, and no password is shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_given_wrongly_are_refused_saying_what_to_do() {
    let redis = OwnSentinel::start().await;
    let database_url = fresh_database(Backend::Sqlite).await;
    let sentinels = redis.nodes();
    let one_sentinel = sentinels.split(',').next().expect("a sentinel").to_owned();
    let cases: [(&[&str], &str); 7] = [
        (
            &["--redis-url", &format!("redis://{one_sentinel}")],
            "is a Redis Sentinel: name the sentinels in WIRECHAT_REDIS_SENTINEL, not REDIS_URL",
        ),
        (
            &[
                "--redis-sentinel",
                "127.0.0.1:6379",
                "--redis-sentinel-master",
                SENTINEL_MASTER,
            ],
            "without cluster mode: name it in REDIS_URL, not WIRECHAT_REDIS_SENTINEL",
        ),
        (
            &[
                "--redis-sentinel",
                &sentinels,
                "--redis-sentinel-master",
                "elsewhere",
            ],
            "watches no master named elsewhere",
        ),
        (
            &["--redis-sentinel", &sentinels],
            "WIRECHAT_REDIS_SENTINEL needs WIRECHAT_REDIS_SENTINEL_MASTER",
        ),
        (
            // An empty setting counts as unset (a compose override turns REDIS_URL off).
            &["--redis-url", "", "--redis-sentinel", &sentinels],
            "WIRECHAT_REDIS_SENTINEL needs WIRECHAT_REDIS_SENTINEL_MASTER",
        ),
        (
            &["--redis-sentinel-master", SENTINEL_MASTER],
            "WIRECHAT_REDIS_SENTINEL_MASTER is set without WIRECHAT_REDIS_SENTINEL",
        ),
        (
            &[
                "--redis-url",
                "redis://127.0.0.1:6379",
                "--redis-sentinel",
                &sentinels,
            ],
            "REDIS_URL and WIRECHAT_REDIS_SENTINEL are both set: set one",
        ),
    ];
    for (redis, said) in cases {
        let text = refused_at_start(&database_url, redis);
        assert!(text.contains(said), "{redis:?}: {text}");
    }
    // A server that turns the password away, whatever it is.
    let guarded_port = free_port();
    let _guarded = redis_server(&[
        "--port",
        &guarded_port.to_string(),
        "--requirepass",
        "the-right-one",
    ])
    .await;
    for url in [
        format!("redis://127.0.0.1:{guarded_port}"),
        format!("redis://:a-wrong-one@127.0.0.1:{guarded_port}"),
    ] {
        let text = refused_at_start(&database_url, &["--redis-url", &url]);
        assert!(text.contains("turned this node away"), "{url}: {text}");
        assert!(!text.contains("a-wrong-one"), "{text}");
    }
    // A sentinel given wrongly is named, without its password.
    let text = refused_at_start(
        &database_url,
        &[
            "--redis-sentinel",
            "redis://:hunter2@127.0.0.1:notaport",
            "--redis-sentinel-master",
            SENTINEL_MASTER,
        ],
    );
    assert!(text.contains("127.0.0.1:notaport"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
