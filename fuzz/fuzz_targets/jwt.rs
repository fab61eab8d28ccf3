//! JWT header and claims handling: arbitrary tokens, and well-signed tokens
//! with arbitrary claims. Nothing may panic; a token is accepted only with
//! the configured key and a `sub`.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use herald_core::Secret;
use herald_core::config::JwtConfig;
use herald_gateway::auth::Verifier;
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "fuzz-secret-0123456789abcdef";

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        Verifier::new(&JwtConfig {
            hs256_secret: Some(Secret::new(SECRET)),
            public_key_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_refresh: Duration::from_secs(300),
            issuer: Some("iss".to_owned()),
            audience: None,
            leeway: Duration::from_secs(30),
            max_lifetime: Duration::from_secs(7 * 86_400),
        })
        .expect("valid config")
    })
}

fn b64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else { return };
    let token = if mode & 1 == 0 {
        // Arbitrary text as a token.
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // Arbitrary header and claims JSON, signed with the right key.
        let text = String::from_utf8_lossy(rest);
        let (header, claims) = text.split_once('\n').unwrap_or(("{\"alg\":\"HS256\"}", &text));
        let signing_input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let tag = ring::hmac::sign(&key, signing_input.as_bytes());
        format!("{signing_input}.{}", b64(tag.as_ref()))
    };
    if let Ok(claims) = verifier().verify(&token) {
        assert!(!claims.sub.is_empty());
    }
});
