//! The command lines of `herald-gateway` and `herald-admin`, built with clap
//! from the configuration key table.
//!
//! Every configuration key is a flag (`--` + the key with `.` and `_` written
//! `-`), with its help line, default and environment variable shown in
//! `--help`; each binary adds its own flags and sub-commands. Flags are
//! handed to the configuration loader as text, like every other source, so
//! a bad value is reported the same way whichever source it came from.
//!
//! A usage error (unknown flag, missing value) is one line on stderr and exit
//! status 2; a configuration error is the caller's, exit status 1.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command};

use crate::config::{KEYS, Kind, Sources};

/// The version of both binaries (the workspace's): `--version`, the
/// start-up log line and `herald_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The help heading of the configuration flags.
pub const CONFIG_HEADING: &str = "Configuration (flag > environment > file > default)";

/// `--config` and one flag per configuration key.
pub fn config_args() -> Vec<Arg> {
    let mut args = vec![
        Arg::new("config")
            .long("config")
            .value_name("PATH")
            .help("configuration file (default: ./herald.toml if present)")
            .help_heading(CONFIG_HEADING),
    ];
    for spec in KEYS {
        let mut help = spec.help.to_owned();
        if let Some(d) = spec.default.filter(|d| !d.is_empty()) {
            help.push_str(&format!(" [default: {d}]"));
        }
        help.push_str(&format!(" [env: {}]", spec.env_var()));
        let mut arg = Arg::new(spec.key)
            .long(spec.flag().trim_start_matches('-').to_owned())
            .value_name(spec.kind.value_name())
            .help(help)
            .help_heading(CONFIG_HEADING)
            .action(ArgAction::Set);
        if spec.kind == Kind::Bool {
            // `--compression`, `--compression false` and `--compression=false`.
            arg = arg.num_args(0..=1).default_missing_value("true");
        }
        args.push(arg);
    }
    args
}

/// The configuration flags given in `matches` (and in the sub-command's
/// matches, which win), as the loader's sources. The environment is left
/// for the caller to fill in.
pub fn sources(matches: &[&ArgMatches]) -> Sources {
    let mut sources = Sources {
        use_default_file: true,
        ..Sources::default()
    };
    for m in matches {
        if let Some(path) = given(m, "config") {
            sources.config_file = Some(PathBuf::from(path));
        }
        for spec in KEYS {
            if let Some(value) = given(m, spec.key) {
                sources.flags.push((spec.key, value));
            }
        }
    }
    sources
}

/// The value of flag `id` when it was given on the command line.
pub fn given(m: &ArgMatches, id: &str) -> Option<String> {
    if m.value_source(id) != Some(ValueSource::CommandLine) {
        return None;
    }
    m.get_one::<String>(id).cloned()
}

/// Whether switch `id` was given.
pub fn switch(m: &ArgMatches, id: &str) -> bool {
    m.try_get_one::<bool>(id).ok().flatten().copied() == Some(true)
}

/// Parses `args` with `command`: `--help` and `--version` are printed
/// (exit 0); a usage error is printed as one line naming the problem
/// (exit 2).
///
/// # Errors
/// The exit code to end the process with.
pub fn parse(
    command: Command,
    args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
) -> Result<ArgMatches, ExitCode> {
    let name = command.get_name().to_owned();
    command
        .version(VERSION)
        .args_override_self(true)
        .disable_help_subcommand(true)
        .try_get_matches_from(args)
        .map_err(|e| {
            use clap::error::ErrorKind;
            match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                    let _ = e.print();
                    ExitCode::SUCCESS
                }
                _ => {
                    eprintln!("{name}: error: {} (see --help)", one_line(&e));
                    ExitCode::from(2)
                }
            }
        })
}

/// A clap error's first paragraph on one line, without its `error: ` prefix.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let first: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = first.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command() -> Command {
        Command::new("herald-test")
            .args(config_args())
            .arg(Arg::new("dev").long("dev").action(ArgAction::SetTrue))
            .subcommand(
                Command::new("token")
                    .args(config_args())
                    .arg(Arg::new("sub").long("sub")),
            )
    }

    fn args(s: &str) -> Vec<String> {
        std::iter::once("herald-test")
            .chain(s.split_whitespace())
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn commands_config_flags_and_extras() {
        let m = parse(
            command(),
            args("token --sub alice --heartbeat-interval=5s --redis-cluster --config x.toml"),
        )
        .unwrap();
        let (name, sub) = m.subcommand().unwrap();
        assert_eq!(name, "token");
        assert_eq!(given(sub, "sub").as_deref(), Some("alice"));
        let s = sources(&[&m, sub]);
        assert_eq!(
            s.flags,
            vec![
                ("redis_cluster", "true".to_owned()),
                ("heartbeat.interval", "5s".to_owned()),
            ]
        );
        assert_eq!(s.config_file, Some(PathBuf::from("x.toml")));

        let m = parse(
            command(),
            args("--dev --compression false --listen a --listen b"),
        )
        .unwrap();
        assert!(m.subcommand().is_none() && switch(&m, "dev"));
        let s = sources(&[&m]);
        assert!(s.flags.contains(&("compression", "false".to_owned())));
        assert!(
            s.flags.contains(&("listen", "b".to_owned())),
            "the last one wins"
        );
    }

    #[test]
    fn refusals_exit_2() {
        for bad in ["--nope", "token --sub", "launch"] {
            assert_eq!(
                parse(command(), args(bad)).unwrap_err(),
                ExitCode::from(2),
                "{bad}"
            );
        }
        for (bad, named) in [("--nope", "--nope"), ("token --sub", "--sub")] {
            let e = command().try_get_matches_from(args(bad)).unwrap_err();
            assert!(one_line(&e).contains(named), "{}", one_line(&e));
            assert!(!one_line(&e).contains('\n'));
        }
    }

    #[test]
    fn help_lists_every_key_with_its_env_and_default() {
        let help = command().render_long_help().to_string();
        for k in KEYS {
            assert!(
                help.contains(&k.flag()) && help.contains(&k.env_var()),
                "{}",
                k.key
            );
        }
        assert!(help.contains("[default: 25s]"), "{help}");
    }
}
