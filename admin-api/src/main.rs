//! `herald-admin`: the admin API as its own stateless service, publishing
//! through Redis (cluster mode only).

fn main() -> std::process::ExitCode {
    eprintln!(
        "herald-admin: error: redis_url is not set; herald-admin runs only in cluster mode (set --redis-url, HERALD_REDIS_URL or redis_url in the config file); a single node serves the admin API itself"
    );
    std::process::ExitCode::from(1)
}
