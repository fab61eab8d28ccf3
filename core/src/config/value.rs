//! How a configuration value is written, for every kind of key.
//!
//! Values reach the typed configuration either natively from TOML (a number,
//! a boolean, an array) or as text from an environment variable, a flag or a
//! built-in default (`"25s"`, `"64KiB"`, `"a,b"`). Each deserializer here
//! accepts both spellings and refuses anything else with a message that says
//! what is accepted; the loader adds the key and where the value came from.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// Parses `65536`, `64KiB`, `1MiB`, `2GiB`, `64KB`, `1MB` into bytes.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size like 65536, 64KiB or 1MiB"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(format!(
                "'{s}' has an unknown unit; use B, KiB, MiB, GiB, KB, MB or GB"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses `500ms`, `25s`, `10m`, `1h`, `1d`, or a bare number of seconds.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || format!("'{s}' is not a duration like 500ms, 25s, 10m or 1h");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(bad()),
    };
    ms.map(Duration::from_millis).ok_or_else(bad)
}

/// A scalar written natively or as text, handed to `parse` as text.
struct Scalar<F>(&'static str, F);

impl<'de, T, F: FnOnce(&str) -> Result<T, String>> Visitor<'de> for Scalar<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.1)(v).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        self.visit_str(if v { "true" } else { "false" })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        if v < 0 {
            return Err(E::custom(format!("{v} is negative")));
        }
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        Err(E::custom(format!("{v} is not a whole number")))
    }
}

fn scalar<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    d.deserialize_any(Scalar(expecting, parse))
}

/// A duration: `500ms`, `25s`, `10m`, `1h`; a bare number is seconds.
///
/// # Errors
/// When the value is none of those.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    scalar(d, "a duration like 25s", parse_duration)
}

/// A byte size: `65536`, `64KiB`, `1MiB`.
///
/// # Errors
/// When the value is none of those.
pub fn size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    scalar(d, "a size like 64KiB", parse_size)
}

/// A whole number, written natively or as text (`1_000` is fine).
///
/// # Errors
/// When the value is not a whole number that fits.
pub fn count<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<u64>,
{
    scalar(d, "a whole number", |s| {
        let n: u64 = s
            .trim()
            .replace('_', "")
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number"))?;
        T::try_from(n).map_err(|_| format!("{n} is too large"))
    })
}

/// `true` / `false` (also `1`/`0`, `yes`/`no`, `on`/`off` as text).
///
/// # Errors
/// When the value is none of those.
pub fn boolean<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    scalar(d, "true or false", |s| {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            other => Err(format!("'{other}' is not true or false")),
        }
    })
}

/// `host:port`.
///
/// # Errors
/// When the value is not an address.
pub fn addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    scalar(d, "an address like 0.0.0.0:8080", |s| {
        s.trim()
            .parse()
            .map_err(|_| format!("'{s}' is not an address like 0.0.0.0:8080"))
    })
}

/// Free text; numbers and booleans are taken as their text.
///
/// # Errors
/// Never for scalars; arrays and tables are refused.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    scalar(d, "a string", |s| Ok(s.to_owned()))
}

/// Optional free text.
///
/// # Errors
/// See [`text`].
pub fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    text(d).map(Some)
}

/// An optional, non-empty path.
///
/// # Errors
/// When the path is empty.
pub fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    scalar(d, "a file path", |s| {
        if s.is_empty() {
            Err("path is empty".to_owned())
        } else {
            Ok(Some(PathBuf::from(s)))
        }
    })
}

/// A list: an array of strings (TOML), or comma-separated text (flags and
/// the environment); empty items are dropped.
///
/// # Errors
/// When an array item is not a string.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct List(PhantomData<()>);
    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings, or comma-separated text")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<String>, E> {
            Ok(v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect())
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut out = Vec::new();
            while let Some(item) = seq.next_element::<serde_json::Value>()? {
                match item {
                    serde_json::Value::String(s) => out.push(s),
                    other => {
                        return Err(de::Error::custom(format!(
                            "list items must be strings, found {other}"
                        )));
                    }
                }
            }
            Ok(out)
        }
    }
    d.deserialize_any(List(PhantomData))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("KiB").is_err() && parse_size("1 XB").is_err());
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("25s"), Ok(Duration::from_secs(25)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1.5s").is_err() && parse_duration("").is_err());
    }

    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(deserialize_with = "duration")]
        d: Duration,
        #[serde(deserialize_with = "count")]
        n: u32,
        #[serde(deserialize_with = "boolean")]
        b: bool,
        #[serde(deserialize_with = "list")]
        l: Vec<String>,
    }

    #[test]
    fn native_and_text_spellings_agree() {
        let native: Probe =
            serde_json::from_str(r#"{"d":5,"n":7,"b":true,"l":["a","b"]}"#).unwrap();
        let text: Probe =
            serde_json::from_str(r#"{"d":"5s","n":"7","b":"yes","l":" a, ,b"}"#).unwrap();
        for p in [native, text] {
            assert_eq!(p.d, Duration::from_secs(5));
            assert_eq!(p.n, 7);
            assert!(p.b);
            assert_eq!(p.l, ["a", "b"]);
        }
        assert!(serde_json::from_str::<Probe>(r#"{"d":"x","n":1,"b":true,"l":""}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"d":1,"n":-1,"b":true,"l":""}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"d":1,"n":1,"b":"maybe","l":""}"#).is_err());
        assert!(serde_json::from_str::<Probe>(r#"{"d":1,"n":1,"b":true,"l":[1]}"#).is_err());
    }
}
