//! Nodes on Redis Sentinel: how they are told where the sentinels are. The failover itself,
//! under traffic, is `faults::redis_sentinel_master_fails_over`.

use crate::helpers::{Backend, fresh_database, refused_at_start};
use crate::process::{OwnSentinel, SENTINEL_MASTER};

/// Sentinels named as one server, a server named as a sentinel, a master the sentinels do
/// not watch, and half of the two settings are each refused at start, saying what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_given_wrongly_are_refused_saying_what_to_do() {
    let redis = OwnSentinel::start().await;
    let database_url = fresh_database(Backend::Sqlite).await;
    let sentinels = redis.nodes();
    let one_sentinel = sentinels.split(',').next().expect("a sentinel").to_owned();
    let cases: [(&[&str], &str); 6] = [
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
}
