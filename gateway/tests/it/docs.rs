//! The documentation says what the code does (issue 29): the configuration
//! table of `docs/configuration.md` against the key table every flag,
//! variable and default comes from (`KEYS`), every error message the
//! validation table quotes against what the binary prints for that input,
//! and the `check-config` sample against a real run. A drift in any of
//! them fails here, not in an operator's hands.

use std::path::PathBuf;
use std::process::Command;

use herald_core::config::KEYS;
use herald_testkit::bin;

fn doc(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The cells of the rows of the table that starts `text` (its header and
/// separator left out), up to its first line that is not a row.
fn rows(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect()
}

/// The first `code span` of a cell.
fn code(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// Every key of the code is in the table, in the code's order, with its
/// default, flag and environment variable; no other key is.
#[test]
fn the_configuration_table_is_the_key_table() {
    let text = doc("configuration.md");
    let start = text
        .find("| key | default | flag | environment variable | meaning |")
        .expect("the key table");
    let table = rows(&text[start..]);
    let documented: Vec<&str> = table.iter().filter_map(|c| code(c[0])).collect();
    let keys: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
    assert_eq!(documented, keys, "the table's keys, in KEYS order");
    for (spec, cells) in KEYS.iter().zip(&table) {
        let key = spec.key;
        assert_eq!(
            cells[0].contains("(secret)"),
            spec.secret,
            "{key}: (secret)"
        );
        assert_eq!(code(cells[2]), Some(spec.flag().as_str()), "{key}: flag");
        assert_eq!(
            code(cells[3]),
            Some(spec.env_var().as_str()),
            "{key}: variable"
        );
        match spec.default.filter(|d| !d.is_empty()) {
            Some(d) => assert_eq!(code(cells[1]), Some(d), "{key}: default"),
            None => assert!(
                !cells[1].starts_with('`'),
                "{key}: no default in the code, '{}' in the docs",
                cells[1]
            ),
        }
    }
}

/// Runs `herald-gateway check-config` with `args` and environment `env`
/// in `dir`; returns its exit status and everything it printed.
fn check_config(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let (code, text) = crate::common::output_of(
        bin("herald-gateway")
            .arg("check-config")
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir),
    );
    (code == Some(0), text)
}

/// Whether `message` (as the docs quote it: `…` for whatever varies)
/// matches a line of `output`.
fn quoted_in(message: &str, output: &str) -> bool {
    let parts: Vec<&str> = message
        .split('…')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    output.lines().any(|line| {
        let mut at = 0;
        parts.iter().all(|p| match line[at..].find(p) {
            Some(i) => {
                at += i + p.len();
                true
            }
            None => false,
        })
    })
}

/// Every example message of the validation table is what the binary
/// prints for an input breaking that rule.
#[test]
fn the_validation_messages_are_the_binarys() {
    let text = doc("configuration.md");
    let start = text
        .find("| rule | example message |")
        .expect("the validation table");
    let table = rows(&text[start..]);
    let dir = tempfile::tempdir().unwrap();
    let secret = ("HERALD_JWT__HS256_SECRET", "0123456789abcdef0123");
    let admin = ("HERALD_ADMIN__API_KEYS", "k");
    // One input per rule, in the table's order: flags, variables, file.
    type Input<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, Option<&'a str>);
    let cases: Vec<Input> = vec![
        (vec![], vec![], Some("listen = [")),
        (vec![], vec![], Some("[limits]\nmax_conections = 5\n")),
        (
            vec![],
            vec![("HERALD_LIMITS__MAX_MESSAGE_SIZE", "64 parsecs")],
            None,
        ),
        (vec!["--node-id", ""], vec![], None),
        (vec!["--limits-max-json-depth", "0"], vec![], None),
        (vec!["--log-format", "xml"], vec![], None),
        (vec!["--heartbeat-interval", "0s"], vec![], None),
        (vec!["--limits-client-queue", "0"], vec![], None),
        (
            vec!["--heartbeat-interval", "60s", "--heartbeat-timeout", "30s"],
            vec![],
            None,
        ),
        (vec!["--limits-max-message-size", "64"], vec![], None),
        (vec!["--history-size", "2000000"], vec![], None),
        (vec!["--tls-cert-file", "/nope.pem"], vec![], None),
        (vec!["--redis-url", "http://x"], vec![], None),
        // Empty items of a comma list are dropped; a file's list keeps them.
        (vec![], vec![], Some("[admin]\napi_keys = [\"k\", \"\"]\n")),
        (
            vec![],
            vec![],
            Some("[[admin.keys]]\nname = \"ticker\"\nkey = \"k2\"\nscopes = []\n"),
        ),
        (vec!["--jwt-hs256-secret", "short"], vec![], None),
        (vec!["--presence-topics", "chat.>.x"], vec![], None),
        (vec!["--presence-timeout", "100ms"], vec![], None),
        (vec!["--jwt-jwks-url", "ftp://keys"], vec![], None),
        (
            vec!["--proxy-subscribe-url", "http://backend/sub"],
            vec![],
            None,
        ),
        (vec!["--proxy-subscribe-topics", "room.*"], vec![], None),
    ];
    assert_eq!(table.len(), cases.len(), "one case per documented rule");
    for (cells, (args, mut env, file)) in table.iter().zip(cases) {
        let message = code(cells[1]).unwrap_or(cells[1]);
        std::fs::write(dir.path().join("herald.toml"), file.unwrap_or("")).unwrap();
        env.push(secret);
        if !file.is_some_and(|f| f.contains("api_keys")) {
            env.push(admin);
        }
        let (ok, output) = check_config(dir.path(), &args, &env);
        assert!(!ok, "'{}' is refused: {args:?}", cells[0]);
        assert!(
            quoted_in(message, &output),
            "'{}': the docs quote\n  {message}\nthe binary prints\n{output}",
            cells[0]
        );
    }
}

/// The `check-config` sample of the docs is a real run's output (its lines
/// in order; `…` stands for the lines left out).
#[test]
fn the_check_config_sample_is_real() {
    let text = doc("configuration.md");
    let start = text
        .find("herald-gateway check-config --limits-client-rate 20")
        .expect("the sample");
    let sample: Vec<&str> = text[start..]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| *l != "…")
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("herald.toml"),
        "admin_listen = \"0.0.0.0:8081\"\n",
    )
    .unwrap();
    let (ok, output) = check_config(
        dir.path(),
        &["--limits-client-rate", "20"],
        &[
            ("HERALD_JWT__HS256_SECRET", "0123456789abcdef0123"),
            ("HERALD_ADMIN__API_KEYS", "k1"),
        ],
    );
    assert!(ok, "{output}");
    let lines: Vec<&str> = output.lines().collect();
    let mut at = 0;
    for want in sample {
        match lines[at..].iter().position(|l| *l == want) {
            Some(i) => at += i + 1,
            None => panic!("the docs show '{want}'; check-config printed\n{output}"),
        }
    }
}

/// What the docs say `herald-admin` requires is what it requires: a
/// Redis URL, and either kind of admin key.
#[test]
fn herald_admin_needs_redis_and_any_admin_key() {
    let run = |args: &[&str]| {
        bin("herald-admin")
            .args(args)
            .arg("--admin-listen")
            .arg("127.0.0.1:0")
            .env("HERALD_DRAIN_TIMEOUT", "0s")
            .output_with_timeout()
    };
    let (ok, text) = run(&["--admin-api-keys", "k"]);
    assert!(!ok && text.contains("redis_url"), "{text}");
    // `admin.keys` alone is enough (it starts; it is killed by the timeout).
    let keys = r#"[{"name":"ops","key":"k-ops","scopes":["stats"]}]"#;
    let (ok, text) = run(&["--redis-url", "redis://127.0.0.1:1", "--admin-keys", keys]);
    assert!(ok || text.contains("herald-admin listening"), "{text}");
    let (ok, text) = run(&["--redis-url", "redis://127.0.0.1:1"]);
    assert!(!ok && text.contains("admin"), "no key at all: {text}");
}

/// Runs a command until it exits or 3 s pass (then kills it).
trait WithTimeout {
    fn output_with_timeout(&mut self) -> (bool, String);
}

impl WithTimeout for Command {
    fn output_with_timeout(&mut self) -> (bool, String) {
        let mut child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (status.is_some_and(|s| s.success()), text)
    }
}
