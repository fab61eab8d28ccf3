//! The README's first example, run against a real gateway: the lines
//! between the markers below are the README's, with its address and keys
//! made variables (the test checks they are the same text).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use herald_client::{Error, Publication, Publisher, TokenBuilder};
use herald_testkit::{Proc, addr_after, bin};

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

#[test]
fn the_readme_example_is_this_one() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let body: Vec<&str> = block.lines().filter(|l| !l.starts_with("use ")).collect();
    let source = include_str!("readme.rs");
    let ours = source
        .split("// README START\n")
        .nth(1)
        .unwrap()
        .split("    // README END")
        .next()
        .unwrap();
    let ours: Vec<String> = ours
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l).to_owned())
        .collect();
    let theirs: Vec<String> = body
        .iter()
        .skip_while(|l| l.is_empty())
        .map(|l| {
            l.replace("\"http://127.0.0.1:8081\", \"admin-key\"", "admin, key")
                .replace("\"a-secret-of-32-characters-or-more\"", "secret")
        })
        .collect();
    assert_eq!(theirs, ours);
}

#[tokio::test]
async fn the_readme_example_runs() {
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
    example(
        &format!("http://{admin}"),
        "k",
        "a-secret-of-32-characters-or-more",
    )
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
    let section = docs.split("## Publish from your backend").nth(1).unwrap();
    let block = section
        .split("```rust\n")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let source = include_str!("readme.rs");
    let ours = source
        .split("// DOCS START\n")
        .nth(1)
        .unwrap()
        .split("    // DOCS END")
        .next()
        .unwrap();
    let ours: String = ours
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert_eq!(block, ours);

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
    docs_example(&format!("http://{admin}"), "k").await.unwrap();
}
