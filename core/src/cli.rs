//! Command-line parsing shared by `herald-gateway` and `herald-admin`.
//!
//! Every configuration key is a flag (derived from [`KEYS`]); each command
//! adds a few flags of its own (`--dev`, `--sub`, …). Hand-written rather than
//! a derive, because the flag set is generated from the key table.

use std::collections::HashMap;
use std::fmt::Write;
use std::path::PathBuf;

use crate::config::{KEYS, Kind, Sources, key_for_flag};

/// A flag specific to one command.
#[derive(Debug, Clone, Copy)]
pub struct Extra {
    /// The flag, with its dashes: `--sub`.
    pub flag: &'static str,
    /// Whether it takes a value (else it is a switch).
    pub takes_value: bool,
    /// One line for `--help`.
    pub help: &'static str,
}

/// The parsed command line.
#[derive(Debug, Default)]
pub struct Parsed {
    /// The sub-command, if one was given.
    pub command: Option<String>,
    /// Configuration flags and `--config`.
    pub sources: Sources,
    /// Command flags, by flag (`--sub` → `alice`; switches → `true`).
    pub extra: HashMap<&'static str, String>,
    /// `--help` was given.
    pub help: bool,
}

impl Parsed {
    /// Whether switch `flag` was given.
    pub fn switch(&self, flag: &str) -> bool {
        self.extra.get(flag).is_some_and(|v| v == "true")
    }
}

/// Parses `args` (without the program name).
///
/// # Errors
/// A message naming the unknown flag or the missing value.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    commands: &[&str],
    extra: &[Extra],
) -> Result<Parsed, String> {
    let mut parsed = Parsed {
        sources: Sources {
            use_default_file: true,
            ..Sources::default()
        },
        ..Parsed::default()
    };
    let mut args = args.into_iter().peekable();
    let mut first = true;
    while let Some(arg) = args.next() {
        if first && !arg.starts_with('-') {
            if !commands.contains(&arg.as_str()) {
                return Err(format!(
                    "unknown command '{arg}' (commands: {})",
                    commands.join(", ")
                ));
            }
            parsed.command = Some(arg);
            first = false;
            continue;
        }
        first = false;
        if arg == "--help" || arg == "-h" {
            parsed.help = true;
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (arg.clone(), None),
        };
        if !flag.starts_with("--") {
            return Err(format!("unexpected argument '{arg}'"));
        }
        let mut value = |switch: bool| -> Result<String, String> {
            if let Some(v) = inline.clone() {
                return Ok(v);
            }
            if switch {
                // `--compression false` as well as `--compression`.
                return Ok(match args.peek().map(String::as_str) {
                    Some("true" | "false") => args.next().unwrap_or_default(),
                    _ => "true".to_owned(),
                });
            }
            args.next().ok_or_else(|| format!("{flag} needs a value"))
        };
        if flag == "--config" {
            parsed.sources.config_file = Some(PathBuf::from(value(false)?));
        } else if let Some(spec) = key_for_flag(&flag) {
            let v = value(spec.kind == Kind::Bool)?;
            parsed.sources.flags.push((spec.key, v));
        } else if let Some(e) = extra.iter().find(|e| e.flag == flag) {
            let v = value(!e.takes_value)?;
            parsed.extra.insert(e.flag, v);
        } else {
            return Err(format!("unknown flag '{flag}' (see --help)"));
        }
    }
    Ok(parsed)
}

/// The `--help` text listing every flag.
pub fn usage(synopsis: &str, extra: &[Extra]) -> String {
    let mut out = format!(
        "{synopsis}\n\nOptions:\n  --config PATH{:>26}configuration file (default: ./herald.toml if present)\n",
        ""
    );
    for e in extra {
        let shown = if e.takes_value {
            format!("{} VALUE", e.flag)
        } else {
            e.flag.to_owned()
        };
        let _ = writeln!(out, "  {shown:<38} {}", e.help);
    }
    out.push_str("\nConfiguration (flag > environment > file > default):\n");
    for k in KEYS {
        let default = k
            .default
            .filter(|d| !d.is_empty())
            .map(|d| format!(" [default: {d}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {:<38} {}{default}\n  {:<38} env {}",
            k.flag(),
            k.help,
            "",
            k.env_var()
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXTRA: &[Extra] = &[
        Extra {
            flag: "--dev",
            takes_value: false,
            help: "",
        },
        Extra {
            flag: "--sub",
            takes_value: true,
            help: "",
        },
    ];

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn commands_config_flags_and_extras() {
        let p = parse(
            args("token --sub alice --heartbeat-interval=5s --redis-cluster --config x.toml"),
            &["serve", "token"],
            EXTRA,
        )
        .unwrap();
        assert_eq!(p.command.as_deref(), Some("token"));
        assert_eq!(p.extra["--sub"], "alice");
        assert_eq!(
            p.sources.flags,
            vec![
                ("heartbeat.interval", "5s".to_owned()),
                ("redis_cluster", "true".to_owned())
            ]
        );
        assert_eq!(p.sources.config_file, Some(PathBuf::from("x.toml")));

        let p = parse(args("--dev --compression false"), &["serve"], EXTRA).unwrap();
        assert!(p.command.is_none() && p.switch("--dev"));
        assert_eq!(p.sources.flags, vec![("compression", "false".to_owned())]);
    }

    #[test]
    fn refusals_name_the_flag() {
        assert!(
            parse(args("--nope"), &[], EXTRA)
                .unwrap_err()
                .contains("--nope")
        );
        assert!(
            parse(args("--sub"), &[], EXTRA)
                .unwrap_err()
                .contains("--sub")
        );
        assert!(
            parse(args("launch"), &["serve"], EXTRA)
                .unwrap_err()
                .contains("launch")
        );
    }

    #[test]
    fn usage_lists_every_key() {
        let text = usage("herald-gateway", EXTRA);
        for k in KEYS {
            assert!(
                text.contains(&k.flag()) && text.contains(&k.env_var()),
                "{}",
                k.key
            );
        }
    }
}
