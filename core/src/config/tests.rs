use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use super::*;

fn write_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn from_file(text: &str) -> (tempfile::NamedTempFile, Sources) {
    let f = write_file(text);
    let sources = Sources {
        config_file: Some(f.path().to_owned()),
        ..Sources::default()
    };
    (f, sources)
}

#[test]
fn defaults_are_valid_and_match_the_contract() {
    let c = Config::defaults();
    assert_eq!(c.listeners.listen.to_string(), "0.0.0.0:8080");
    assert_eq!(c.listeners.admin_listen.to_string(), "127.0.0.1:8081");
    assert_eq!(c.heartbeat.interval, Duration::from_secs(25));
    assert_eq!(c.heartbeat.timeout, Duration::from_secs(60));
    assert_eq!(c.limits.max_connections, 100_000);
    assert_eq!(c.limits.max_message_size, 64 * 1024);
    assert_eq!(c.limits.max_subscriptions, 256);
    assert_eq!(c.limits.max_json_depth, 32);
    assert_eq!(c.limits.client_queue, 1024);
    assert_eq!(c.limits.client_rate, 50);
    assert_eq!(c.limits.client_burst, 100);
    assert_eq!(c.history.size, 1000);
    assert_eq!(c.history.ttl, Duration::from_secs(600));
    assert_eq!(c.jwt.leeway, Duration::from_secs(30));
    assert_eq!(c.node.drain_timeout, Duration::from_secs(30));
    assert!(!c.listeners.compression && !c.redis.cluster);
    assert!(c.listeners.allowed_origins.is_empty() && c.redis.url.is_none());
    assert!(!c.node.id.is_empty());
    assert!(!c.log.json());
    let p = c.publish;
    let d = PublishConfig::default();
    assert_eq!(
        (
            p.durability,
            p.min_replicas,
            p.replication_timeout,
            p.idempotency_window
        ),
        (
            d.durability,
            d.min_replicas,
            d.replication_timeout,
            d.idempotency_window
        ),
        "PublishConfig::default agrees with the key table"
    );
    let d = PresenceConfig::default();
    assert_eq!(
        (&c.presence.topics, c.presence.timeout),
        (&d.topics, d.timeout),
        "PresenceConfig::default agrees with the key table"
    );
}

#[test]
fn presence_patterns_are_checked() {
    let with = |key: &'static str, value: &str| {
        load(&Sources {
            flags: vec![(key, value.to_owned())],
            ..Sources::default()
        })
    };
    let c = with("presence.topics", "chat.>,rooms.*").unwrap().config;
    assert!(
        c.presence
            .tracks(&herald_protocol::Topic::new("chat.a.b").unwrap())
    );
    assert!(
        !c.presence
            .tracks(&herald_protocol::Topic::new("news").unwrap())
    );
    let e = with("presence.topics", "chat.>.x").unwrap_err().to_string();
    assert!(e.contains("presence.topics"), "{e}");
    let e = with("presence.timeout", "100ms").unwrap_err().to_string();
    assert!(e.contains("presence.timeout"), "{e}");
}

#[test]
fn publish_settings_and_sentinel_urls() {
    let c = load(&Sources {
        flags: vec![
            ("publish.durability", "replicated".to_owned()),
            ("publish.min_replicas", "2".to_owned()),
            (
                "redis_url",
                "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster".to_owned(),
            ),
        ],
        ..Sources::default()
    })
    .unwrap()
    .config;
    assert_eq!(c.publish.durability, Durability::Replicated);
    assert_eq!(c.publish.min_replicas, 2);
    let err = load(&Sources {
        flags: vec![("publish.durability", "quorum".to_owned())],
        ..Sources::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("'publish.durability'") && err.contains("quorum"),
        "{err}"
    );
    let err = load(&Sources {
        flags: vec![
            ("redis_url", "redis+sentinel://h:1/m".to_owned()),
            ("redis_cluster", "true".to_owned()),
        ],
        ..Sources::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("redis_cluster"), "{err}");
}

#[test]
fn flag_beats_env_beats_file_beats_default() {
    let file = write_file(
        "[heartbeat]\ninterval = \"10s\"\ntimeout = \"70s\"\n[limits]\nclient_rate = 7\nmax_subscriptions = 3\n",
    );
    let env = HashMap::from([
        ("HERALD_HEARTBEAT__INTERVAL".to_owned(), "11s".to_owned()),
        ("HERALD_LIMITS__CLIENT_RATE".to_owned(), "8".to_owned()),
        ("HERALD_NOT_A_KEY".to_owned(), "ignored".to_owned()),
    ]);
    let sources = Sources {
        flags: vec![("heartbeat.interval", "12s".to_owned())],
        env,
        config_file: Some(file.path().to_owned()),
        use_default_file: false,
    };
    let loaded = load(&sources).unwrap();
    let c = &loaded.config;
    assert_eq!(c.heartbeat.interval, Duration::from_secs(12)); // flag
    assert_eq!(c.limits.client_rate, 8); // env
    assert_eq!(c.heartbeat.timeout, Duration::from_secs(70)); // file
    assert_eq!(c.limits.max_subscriptions, 3); // file
    assert_eq!(c.limits.client_burst, 100); // default
    let described = loaded.describe();
    assert!(
        described.contains("heartbeat.interval = \"12s\"  # flag --heartbeat-interval"),
        "{described}"
    );
    assert!(
        described.contains("# env HERALD_LIMITS__CLIENT_RATE"),
        "{described}"
    );
    assert!(
        described.contains("limits.max_subscriptions = 3  # file "),
        "{described}"
    );
    assert!(
        described.contains("limits.client_burst = \"100\"  # default"),
        "{described}"
    );
}

#[test]
fn unknown_file_key_is_named() {
    let (_f, sources) = from_file("[limits]\nmax_conections = 5\n");
    let err = load(&sources).unwrap_err().to_string();
    assert!(err.contains("unknown key 'limits.max_conections'"), "{err}");
    let (_f, sources) = from_file("colour = true\n");
    let err = load(&sources).unwrap_err().to_string();
    assert!(err.contains("'colour'"), "{err}");
    let (_f, sources) = from_file("limits = 3\n");
    let err = load(&sources).unwrap_err().to_string();
    assert!(err.contains("unknown key 'limits'"), "{err}");
}

#[test]
fn bad_values_name_key_and_source() {
    let env = HashMap::from([(
        "HERALD_LIMITS__MAX_MESSAGE_SIZE".to_owned(),
        "64 parsecs".to_owned(),
    )]);
    let err = load(&Sources {
        env,
        ..Sources::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("'limits.max_message_size'"), "{err}");
    assert!(err.contains("env HERALD_LIMITS__MAX_MESSAGE_SIZE"), "{err}");
    assert!(err.contains("KiB"), "says what is accepted: {err}");

    let err = load(&Sources {
        flags: vec![("listen", "nowhere".to_owned())],
        ..Sources::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("'listen'") && err.contains("flag --listen"),
        "{err}"
    );

    let err = load(&Sources {
        flags: vec![("heartbeat.timeout", "10s".to_owned())],
        ..Sources::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("heartbeat.timeout"), "{err}");

    let (_f, sources) = from_file("compression = \"maybe\"\n");
    let err = load(&sources).err().unwrap().to_string();
    assert!(
        err.contains("'compression'") && err.contains("file "),
        "{err}"
    );
    let (_f, sources) = from_file("[limits]\nclient_queue = -1\n");
    let err = load(&sources).err().unwrap().to_string();
    assert!(
        err.contains("'limits.client_queue'") && err.contains("negative"),
        "{err}"
    );
}

#[test]
fn lists_secrets_and_masking() {
    let file = write_file(
        "admin.api_keys = [\"k1\", \"k2\"]\nallowed_origins = [\"https://a.example\"]\n",
    );
    let sources = Sources {
        flags: vec![("jwt.hs256_secret", "0012345678901234567".to_owned())],
        config_file: Some(file.path().to_owned()),
        ..Sources::default()
    };
    let loaded = load(&sources).unwrap();
    assert_eq!(loaded.config.admin.api_keys.len(), 2);
    assert_eq!(
        loaded.config.listeners.allowed_origins,
        vec!["https://a.example"]
    );
    assert_eq!(
        loaded.config.jwt.hs256_secret.as_ref().unwrap().expose(),
        "0012345678901234567",
        "a numeric-looking secret keeps its leading zeros"
    );
    let described = loaded.describe();
    assert!(
        !described.contains("k1") && !described.contains("0012345678901234567"),
        "{described}"
    );
    assert!(
        described.contains("admin.api_keys = \"****\""),
        "{described}"
    );

    let env = HashMap::from([("HERALD_ADMIN__API_KEYS".to_owned(), "a, b".to_owned())]);
    let c = load(&Sources {
        env,
        ..Sources::default()
    })
    .unwrap()
    .config;
    assert_eq!(c.admin.api_keys, vec![Secret::new("a"), Secret::new("b")]);
}

#[test]
fn toml_native_types_are_accepted() {
    let (_f, sources) =
        from_file("compression = true\ndrain_timeout = 5\n[limits]\nmax_message_size = 4096\n");
    let c = load(&sources).unwrap().config;
    assert!(c.listeners.compression);
    assert_eq!(c.node.drain_timeout, Duration::from_secs(5));
    assert_eq!(c.limits.max_message_size, 4096);
}

#[test]
fn missing_explicit_file_is_an_error() {
    let err = load(&Sources {
        config_file: Some(PathBuf::from("/nonexistent/herald.toml")),
        ..Sources::default()
    })
    .err()
    .unwrap();
    assert!(matches!(err, ConfigError::Read { .. }));
}

#[test]
fn the_admin_service_reads_its_own_subsystems_from_a_shared_file() {
    let (_f, sources) = from_file(
        "admin_listen = \"127.0.0.1:9000\"\nredis_url = \"redis://r:6379\"\ncompression = true\n[admin]\napi_keys = [\"k\"]\n[heartbeat]\ninterval = \"1s\"\ntimeout = \"2s\"\n[limits]\nmax_connections = 5\nmax_message_size = \"1KiB\"\n",
    );
    let c = load_admin_service(&sources).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(c.payload.max_message_size, 1024);
    assert_eq!(c.admin.api_keys.len(), 1);
    assert!(c.redis.url.is_some());
    // A typo is still a typo, whichever process reads the file.
    let (_f, sources) = from_file("[heartbeat]\nintervall = \"1s\"\n");
    let err = load_admin_service(&sources).unwrap_err().to_string();
    assert!(err.contains("unknown key 'heartbeat.intervall'"), "{err}");
    // Gateway-only values are not its business.
    let (_f, sources) = from_file("[heartbeat]\ninterval = \"9s\"\ntimeout = \"1s\"\n");
    assert!(load_admin_service(&sources).is_ok());
    assert!(load(&sources).is_err());
}

#[test]
fn scoped_admin_keys_from_the_file_and_the_environment() {
    let (_f, mut sources) = from_file(
        r#"
[[admin.keys]]
name = "ticks"
key = "k-ticks-0123456789"
scopes = ["publish"]
topics = ["stocks.>"]

[[admin.keys]]
name = "ops"
key = "k-ops-0123456789"
scopes = ["stats", "disconnect", "revoke"]
"#,
    );
    let loaded = load(&sources).unwrap();
    let keys = &loaded.config.admin.keys;
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].name, "ticks");
    assert_eq!(keys[0].scopes, vec![Scope::Publish]);
    assert!(
        keys[0]
            .topics
            .allows(&herald_protocol::Topic::new("stocks.AAPL").unwrap())
    );
    assert_eq!(keys[1].scopes.len(), 3);
    assert!(
        !loaded.describe().contains("k-ops-0123456789"),
        "keys are masked"
    );
    // The environment spells them as JSON, and wins over the file.
    sources.env = HashMap::from([(
        "HERALD_ADMIN__KEYS".to_owned(),
        r#"[{"name":"h","key":"k-h-0123456789","scopes":["history"]}]"#.to_owned(),
    )]);
    let keys = load(&sources).unwrap().config.admin.keys;
    assert_eq!((keys.len(), keys[0].scopes[0]), (1, Scope::History));
    for (bad, why) in [
        (r#"[{"name":"x","key":"k","scopes":["fly"]}]"#, "admin.keys"),
        (
            r#"[{"name":"x","key":"k","scopes":[]}]"#,
            "'scopes' must not be empty",
        ),
        (
            r#"[{"name":"","key":"k","scopes":["stats"]}]"#,
            "non-empty 'name'",
        ),
        (
            r#"[{"name":"x","key":"k","scopes":["stats"]},{"name":"x","key":"j","scopes":["stats"]}]"#,
            "two keys have this name",
        ),
        (
            r#"[{"name":"x","key":"k","scopes":["stats"],"topics":["a"]}]"#,
            "no 'publish' scope",
        ),
        (
            r#"[{"name":"x","key":"","scopes":["stats"]}]"#,
            "must not be empty",
        ),
        ("not json", "JSON array"),
    ] {
        let e = load(&Sources {
            env: HashMap::from([("HERALD_ADMIN__KEYS".to_owned(), bad.to_owned())]),
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn webhooks_need_a_secret_and_known_event_types() {
    use crate::webhooks::{Events, Kind};
    let with = |pairs: &[(&'static str, &str)]| {
        load(&Sources {
            flags: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            ..Sources::default()
        })
    };
    let url = ("webhooks.url", "http://127.0.0.1:9/hooks");
    let secret = ("webhooks.secret", "0123456789abcdef");
    // Off by default: nothing recorded.
    let c = with(&[]).unwrap().config;
    assert_eq!(c.webhooks.selected(), Events::NONE);
    let c = with(&[url, secret]).unwrap().config;
    assert_eq!(c.webhooks.selected(), Events::ALL);
    let c = with(&[url, secret, ("webhooks.events", "presence.leave")])
        .unwrap()
        .config;
    assert_eq!(c.webhooks.selected(), Events::NONE.with(Kind::Leave));
    for (bad, key) in [
        (vec![url], "webhooks.secret"),
        (vec![url, ("webhooks.secret", "short")], "webhooks.secret"),
        (
            vec![url, secret, ("webhooks.events", "session.nope")],
            "webhooks.events",
        ),
        (vec![("webhooks.url", "ftp://x/"), secret], "webhooks.url"),
        (
            vec![url, secret, ("webhooks.max_queue", "0")],
            "webhooks.max_queue",
        ),
    ] {
        let e = with(&bad).unwrap_err().to_string();
        assert!(e.contains(key), "{bad:?}: {e}");
    }
}
