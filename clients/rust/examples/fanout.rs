//! `N` subscribers of one topic on this crate's `Client`, a publisher on
//! its `Publisher` offering events at a steady rate: what arrives, and how
//! fast. The measurement behind the crate documentation's comparison with
//! `herald-loadtest` (docs/benchmarks.md).
//!
//! `cargo run --release -p herald-client --example fanout -- WS_URL ADMIN_URL ADMIN_KEY HS256_SECRET N RATE SECONDS`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_client::{Client, Publication, Publisher, Token, TokenBuilder};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, ws, admin, key, secret, n, rate, seconds] = args.as_slice() else {
        return Err("usage: fanout WS_URL ADMIN_URL ADMIN_KEY HS256_SECRET N RATE SECONDS".into());
    };
    let (n, rate, seconds): (u64, u64, u64) = (n.parse()?, rate.parse()?, seconds.parse()?);
    let token = TokenBuilder::new("fanout")
        .topics(["bench"])
        .sign_hs256(secret)?;
    let received = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..n {
        let mut client = Client::builder([ws.as_str()], Token::Static(token.clone()))
            .topics(&["bench"])
            .connect();
        while !client.positions().contains_key("bench") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let received = received.clone();
        clients.push(tokio::spawn(async move {
            while let Some(Ok(_)) = client.next().await {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let herald = Publisher::new(admin, key)?;
    let start = Instant::now();
    let mut published = 0u64;
    let total = rate * seconds;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while published < total {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        let batch: Vec<Publication> = (published..due.min(total))
            .map(|i| Publication::json("bench", i))
            .collect();
        if !batch.is_empty() {
            published += herald.publish_batch(&batch).await?.len() as u64;
        }
    }
    let expected = published * n;
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = start.elapsed().as_secs_f64();
    let got = received.load(Ordering::Relaxed);
    println!(
        "subscribers {n}, published {published}, received {got} of {expected} (lost {}), {:.0} deliveries/s over {secs:.1} s",
        expected.saturating_sub(got),
        got as f64 / secs
    );
    Ok(())
}
