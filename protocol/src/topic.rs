//! Topics and permission patterns (contract §3).
//!
//! A [`Topic`] is validated once, when it enters the process, and is cheap to
//! clone afterwards (a shared `Arc<str>`), because the same topic name is held by
//! the hub, the broker, every queued event and every session subscribed to it.
//! A [`TopicPattern`] is what a token grants; it is only matched when a client
//! subscribes or publishes, never on the delivery path.

use std::fmt;
use std::sync::Arc;

/// Longest topic or pattern, in bytes.
pub const MAX_TOPIC_LEN: usize = 255;

/// Why a string is not a topic or a pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicError {
    /// Zero bytes.
    Empty,
    /// More than [`MAX_TOPIC_LEN`] bytes.
    TooLong,
    /// Two dots in a row, or a leading or trailing dot.
    EmptySegment,
    /// A byte outside `A-Z a-z 0-9 _ - : @` (and, in patterns, `*` and `>`).
    InvalidCharacter,
    /// `*` or `>` mixed with other characters in a segment, or `>` not last.
    MisplacedWildcard,
}

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TopicError::Empty => "topic is empty",
            TopicError::TooLong => "topic is longer than 255 bytes",
            TopicError::EmptySegment => "topic has an empty segment",
            TopicError::InvalidCharacter => "topic segments may only contain A-Z a-z 0-9 _ - : @",
            TopicError::MisplacedWildcard => {
                "'*' must be a whole segment and '>' the whole last segment"
            }
        })
    }
}

impl std::error::Error for TopicError {}

fn is_segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'@')
}

fn check_length(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        Err(TopicError::Empty)
    } else if s.len() > MAX_TOPIC_LEN {
        Err(TopicError::TooLong)
    } else {
        Ok(())
    }
}

fn check_segment(segment: &str) -> Result<(), TopicError> {
    if segment.is_empty() {
        return Err(TopicError::EmptySegment);
    }
    let bytes = segment.as_bytes();
    if bytes.iter().all(|&b| is_segment_byte(b)) {
        Ok(())
    } else if bytes.iter().any(|&b| b == b'*' || b == b'>') {
        Err(TopicError::MisplacedWildcard)
    } else {
        Err(TopicError::InvalidCharacter)
    }
}

/// A validated topic name: `news`, `stocks.AAPL`, `alerts.user:42`.
///
/// Cloning shares the name; equality and hashing are by name.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates `name` as a topic.
    ///
    /// # Errors
    /// Returns the first rule the name breaks.
    pub fn new(name: &str) -> Result<Topic, TopicError> {
        check_length(name)?;
        for segment in name.split('.') {
            check_segment(segment)?;
        }
        Ok(Topic(Arc::from(name)))
    }

    /// The topic name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Topic {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Topic {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// A permission pattern: a topic in which a segment may be `*` (exactly one
/// segment) and the last segment may be `>` (one or more segments).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicPattern(Arc<str>);

impl TopicPattern {
    /// Validates `pattern`.
    ///
    /// # Errors
    /// Returns the first rule the pattern breaks.
    pub fn new(pattern: &str) -> Result<TopicPattern, TopicError> {
        check_length(pattern)?;
        let mut segments = pattern.split('.').peekable();
        while let Some(segment) = segments.next() {
            match segment {
                "*" => {}
                ">" if segments.peek().is_none() => {}
                ">" => return Err(TopicError::MisplacedWildcard),
                other => check_segment(other)?,
            }
        }
        Ok(TopicPattern(Arc::from(pattern)))
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` is allowed by this pattern.
    pub fn matches(&self, topic: &Topic) -> bool {
        let mut pattern = self.0.split('.');
        let mut topic = topic.segments();
        loop {
            match (pattern.next(), topic.next()) {
                (None, None) => return true,
                // `>` is always the last pattern segment and needs one or more.
                (Some(">"), Some(_)) => return true,
                (Some("*"), Some(_)) => {}
                (Some(p), Some(t)) if p == t => {}
                _ => return false,
            }
        }
    }
}

impl fmt::Debug for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A set of patterns, as granted by one token claim (`topics`, `publish`,
/// `presence`). A boxed slice, not a `Vec`: a session holds three of them
/// for its whole life, and never grows one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions(Box<[TopicPattern]>);

impl Permissions {
    /// Parses every pattern.
    ///
    /// # Errors
    /// The first invalid pattern, with its error.
    pub fn parse<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Permissions, (String, TopicError)> {
        patterns
            .into_iter()
            .map(|p| TopicPattern::new(p).map_err(|e| (p.to_owned(), e)))
            .collect::<Result<Box<[_]>, _>>()
            .map(Permissions)
    }

    /// Whether any pattern allows `topic`.
    pub fn allows(&self, topic: &Topic) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    /// The patterns, in the order granted.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn topic(s: &str) -> Topic {
        Topic::new(s).unwrap()
    }

    fn pattern(s: &str) -> TopicPattern {
        TopicPattern::new(s).unwrap()
    }

    #[test]
    fn accepts_contract_examples() {
        for t in [
            "news",
            "stocks.AAPL",
            "alerts.user:42",
            "chat.room-1",
            "a@b_c",
        ] {
            assert!(Topic::new(t).is_ok(), "{t}");
        }
    }

    #[test]
    fn rejects_bad_topics_with_reason() {
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(Topic::new(&"a".repeat(256)), Err(TopicError::TooLong));
        assert!(Topic::new(&"a".repeat(255)).is_ok());
        assert_eq!(Topic::new("a..b"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new(".a"), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a."), Err(TopicError::EmptySegment));
        assert_eq!(Topic::new("a b"), Err(TopicError::InvalidCharacter));
        assert_eq!(Topic::new("é"), Err(TopicError::InvalidCharacter));
        assert_eq!(Topic::new("a.*"), Err(TopicError::MisplacedWildcard));
        assert_eq!(Topic::new("a.>"), Err(TopicError::MisplacedWildcard));
    }

    #[test]
    fn rejects_bad_patterns() {
        assert_eq!(TopicPattern::new(">.a"), Err(TopicError::MisplacedWildcard));
        assert_eq!(TopicPattern::new("a*"), Err(TopicError::MisplacedWildcard));
        assert_eq!(
            TopicPattern::new("a.>b"),
            Err(TopicError::MisplacedWildcard)
        );
        assert_eq!(TopicPattern::new("a..*"), Err(TopicError::EmptySegment));
        assert!(TopicPattern::new("*.*.>").is_ok());
        assert!(TopicPattern::new(">").is_ok());
    }

    #[test]
    fn star_matches_exactly_one_segment() {
        let p = pattern("stocks.*");
        assert!(p.matches(&topic("stocks.AAPL")));
        assert!(!p.matches(&topic("stocks.AAPL.bid")));
        assert!(!p.matches(&topic("stocks")));
        assert!(!p.matches(&topic("bonds.AAPL")));
    }

    #[test]
    fn gt_matches_one_or_more_segments() {
        let p = pattern("chat.>");
        assert!(p.matches(&topic("chat.a")));
        assert!(p.matches(&topic("chat.a.b")));
        assert!(!p.matches(&topic("chat")));
        assert!(!p.matches(&topic("chats.a")));
    }

    #[test]
    fn literal_pattern_matches_itself_only() {
        let p = pattern("news");
        assert!(p.matches(&topic("news")));
        assert!(!p.matches(&topic("news.x")));
        assert!(!p.matches(&topic("new")));
    }

    /// Reference matcher, written as a recursion over segment lists so it shares
    /// nothing with the iterator-based one under test.
    fn reference(p: &[&str], t: &[&str]) -> bool {
        match (p.split_first(), t.split_first()) {
            (None, None) => true,
            (Some((&">", [])), Some(_)) => true,
            (Some((&"*", pr)), Some((_, tr))) => reference(pr, tr),
            (Some((ps, pr)), Some((ts, tr))) => ps == ts && reference(pr, tr),
            _ => false,
        }
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            "[A-Za-z0-9_:@-]{1,4}",
        ]
    }

    fn topic_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(segment(), 1..5).prop_map(|s| s.join("."))
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        (
            prop::collection::vec(prop_oneof![segment(), Just("*".to_owned())], 0..5),
            any::<bool>(),
        )
            .prop_filter_map("pattern needs a segment", |(mut segs, gt)| {
                if gt {
                    segs.push(">".to_owned());
                }
                (!segs.is_empty()).then(|| segs.join("."))
            })
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(p in pattern_strategy(), t in topic_strategy()) {
            let pat = TopicPattern::new(&p).unwrap();
            let top = Topic::new(&t).unwrap();
            let ps: Vec<&str> = p.split('.').collect();
            let ts: Vec<&str> = t.split('.').collect();
            prop_assert_eq!(pat.matches(&top), reference(&ps, &ts));
        }

        #[test]
        fn every_topic_is_a_pattern_matching_itself(t in topic_strategy()) {
            let top = Topic::new(&t).unwrap();
            prop_assert!(TopicPattern::new(&t).unwrap().matches(&top));
            prop_assert!(TopicPattern::new(">").unwrap().matches(&top));
        }

        #[test]
        fn topic_validation_never_panics(s in "\\PC{0,300}") {
            let _ = Topic::new(&s);
            let _ = TopicPattern::new(&s);
        }

        #[test]
        fn valid_topics_obey_the_grammar(s in "[a-z.*>]{0,12}") {
            let valid = Topic::new(&s).is_ok();
            let grammar = !s.is_empty()
                && s.split('.').all(|seg| !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_lowercase()));
            prop_assert_eq!(valid, grammar);
        }
    }
}
