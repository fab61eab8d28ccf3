//! The README's first example, run against a real gateway: the lines
//! between the markers below are the README's, with its address and keys
//! made variables (the test checks they are the same text).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use herald_client::{Error, Publication, Publisher, TokenBuilder};
use herald_testkit::{Proc, addr_after, bin};

/// A gateway for the examples: its process and admin address.
fn node() -> (Proc, std::net::SocketAddr) {
    let mut cmd = bin("herald-gateway");
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    cmd.args([
        "--jwt-hs256-secret",
        "readme-secret-0123456789abcdef01",
        "--admin-api-keys",
        "k",
    ]);
    let mut node = Proc::start(cmd);
    let admin = addr_after(&node.line_with("herald-gateway listening"), "admin=");
    (node, admin)
}

/// This file's lines between `// <name> START` and `// <name> END`,
/// unindented once.
fn ours(name: &str) -> Vec<String> {
    let source = include_str!("readme.rs");
    let start = format!("// {name} START\n");
    let end = format!("    // {name} END");
    let between = source
        .split(&start)
        .nth(1)
        .unwrap()
        .split(&end)
        .next()
        .unwrap();
    between
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned())
        .collect()
}

async fn example(admin: &str, key: &str, secret: &str) -> Result<(), Error> {
    // README START
    let herald = Publisher::new(admin, key)?;
    let id = herald
        .publish("news", serde_json::json!({"title": "Hello"}))
        .await?; // retried safely
    let again = herald
        .publish_one(&Publication::json("orders", 17).idempotency_key("order-17"))
        .await?;
    let history = herald.history("news", None, Some(10)).await?;
    println!("{id} {again} {}", history["messages"][0]["data"]);

    let token = TokenBuilder::new("alice")
        .topics(["news", "chat.*"])
        .sign_hs256(secret)?;
    // README END
    assert!(!id.is_empty() && !again.is_empty() && token.starts_with("ey"));
    assert_eq!(history["messages"][0]["data"]["title"], "Hello");
    Ok(())
}

/// The first ```rust block after `after` in `text`.
fn block(text: &str, after: &str) -> Vec<String> {
    let rest = text.split(after).nth(1).unwrap();
    let code = rest
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    code.lines().map(str::to_owned).collect()
}

#[test]
fn the_readme_example_is_this_one() {
    let theirs: Vec<String> = block(include_str!("../README.md"), "# herald-client")
        .into_iter()
        .filter(|l| !l.starts_with("use "))
        .skip_while(String::is_empty)
        .map(|l| {
            l.replace("\"http://127.0.0.1:8081\", \"admin-key\"", "admin, key")
                .replace("\"a-secret-of-32-characters-or-more\"", "secret")
        })
        .collect();
    assert_eq!(theirs, ours("README"));
}

#[tokio::test]
async fn the_readme_example_runs() {
    let (_node, admin) = node();
    let secret = "a-secret-of-32-characters-or-more";
    example(&format!("http://{admin}"), "k", secret)
        .await
        .unwrap();
}

/// The Rust block of docs/clients.md ("Publish from your backend").
async fn docs_example(admin_url: &str, api_key: &str) -> Result<(), herald_client::Error> {
    // DOCS START
    let herald = herald_client::Publisher::new(admin_url, api_key)?;
    let id = herald
        .publish("news", serde_json::json!({"title": "Hello"}))
        .await?;
    println!("{id}");
    // DOCS END
    Ok(())
}

#[tokio::test]
async fn the_docs_example_is_this_one_and_runs() {
    let docs = include_str!("../../../docs/clients.md");
    assert_eq!(block(docs, "## Publish from your backend"), ours("DOCS"));
    let (_node, admin) = node();
    docs_example(&format!("http://{admin}"), "k").await.unwrap();
}
