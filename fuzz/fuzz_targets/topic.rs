//! Topic and permission-pattern parsing and matching. Nothing may panic; a
//! valid topic is a valid pattern that matches itself, and `>` matches it.
#![no_main]

use herald_protocol::{Topic, TopicPattern};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (a, b) = text.split_once('\n').unwrap_or((text, text));
    if let Ok(topic) = Topic::new(a) {
        let itself = TopicPattern::new(a).expect("every topic is a pattern");
        assert!(itself.matches(&topic));
        assert!(TopicPattern::new(">").expect("valid").matches(&topic));
        assert!(topic.as_str().len() <= 255);
    }
    if let (Ok(pattern), Ok(topic)) = (TopicPattern::new(b), Topic::new(a)) {
        let _ = pattern.matches(&topic);
    }
});
