//! Where configuration values come from, layered with `figment`: built-in
//! defaults < the TOML file < the environment < command-line flags.
//!
//! Each source is one [`Layer`], built from the [`KEYS`](super::keys::KEYS)
//! table: the defaults are the table's, the environment is read through each
//! key's variable name from a map the caller passes in (never from the
//! process, so tests need no global state), and flags arrive already parsed
//! by clap. Only a file can name a key that does not exist, and a file is
//! checked for that before anything else, naming the key and the file.
//! Values from the environment, flags and defaults stay text; the typed
//! configuration parses them (see [`value`](super::value)), so a secret that
//! happens to look like a number keeps its leading zeros.
//!
//! figment keeps where every value came from, which is how an invalid value
//! is reported with its key and source, and how `check-config` shows each
//! effective value's origin.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;

use super::ConfigError;
use super::keys::{self, KEYS};

/// The configuration file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "herald.toml";

/// The sources a configuration is built from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// `(key, value)` pairs from command-line flags, in order; later wins.
    pub flags: Vec<(&'static str, String)>,
    /// The process environment (only the variables of known keys are read).
    pub env: HashMap<String, String>,
    /// `--config PATH` if given.
    pub config_file: Option<PathBuf>,
    /// Without `config_file`, read `herald.toml` from the working directory if
    /// it exists (what the commands do; tests and embedders leave this off).
    pub use_default_file: bool,
}

const DEFAULT: &str = "default";
const FILE: &str = "file";
const ENV: &str = "env";
const FLAG: &str = "flag";

/// One source's values, as a figment provider.
struct Layer {
    name: &'static str,
    file: Option<PathBuf>,
    values: Dict,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let metadata = Metadata::named(self.name);
        match &self.file {
            Some(path) => metadata.source(figment::Source::File(path.clone())),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Puts `value` at dotted `key` inside `into`, creating the sections.
fn nest(into: &mut Dict, key: &str, value: Value) {
    match key.split_once('.') {
        None => {
            into.insert(key.to_owned(), value);
        }
        Some((section, rest)) => {
            let entry = into
                .entry(section.to_owned())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, dict) = entry {
                nest(dict, rest, value);
            }
        }
    }
}

fn text_layer<'a>(
    name: &'static str,
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Layer {
    let mut values = Dict::new();
    for (key, value) in pairs {
        nest(&mut values, key, Value::from(value.to_owned()));
    }
    Layer {
        name,
        file: None,
        values,
    }
}

/// Every dotted key in `table` that names no configuration key. A table is a
/// section unless its own path is a key (a structured value).
fn unknown_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) if keys::find(&path).is_none() => unknown_keys(&path, t, out),
            _ if keys::find(&path).is_none() => out.push(path),
            _ => {}
        }
    }
}

fn file_layer(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })?;
    let mut unknown = Vec::new();
    unknown_keys("", &table, &mut unknown);
    if let Some(key) = unknown.into_iter().next() {
        return Err(ConfigError::UnknownKey {
            key,
            origin: path.display().to_string(),
        });
    }
    let values: Dict = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })?;
    Ok(Layer {
        name: FILE,
        file: Some(path.to_owned()),
        values,
    })
}

/// The merged sources, ready to be read into typed sections.
#[derive(Debug)]
pub struct Layers {
    figment: Figment,
    file: Option<PathBuf>,
}

impl Layers {
    /// Reads and merges every source.
    ///
    /// # Errors
    /// An unreadable or malformed file, or a key in it that does not exist.
    pub fn load(sources: &Sources) -> Result<Layers, ConfigError> {
        let file = match &sources.config_file {
            Some(path) => Some(path.clone()),
            None => {
                let default = PathBuf::from(DEFAULT_CONFIG_FILE);
                (sources.use_default_file && default.is_file()).then_some(default)
            }
        };
        let defaults = text_layer(
            DEFAULT,
            KEYS.iter().filter_map(|k| Some((k.key, k.default?))),
        );
        let env_names: Vec<(&str, String)> = KEYS.iter().map(|k| (k.key, k.env_var())).collect();
        let env = text_layer(
            ENV,
            env_names
                .iter()
                .filter_map(|(key, var)| Some((*key, sources.env.get(var)?.as_str()))),
        );
        let flags = text_layer(FLAG, sources.flags.iter().map(|(k, v)| (*k, v.as_str())));
        let mut figment = Figment::new().merge(defaults);
        if let Some(path) = &file {
            figment = figment.merge(file_layer(path)?);
        }
        Ok(Layers {
            figment: figment.merge(env).merge(flags),
            file,
        })
    }

    /// The file that was read, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads `T` from the section `section` (or from the top level).
    ///
    /// # Errors
    /// A value that does not parse, naming its key and where it came from.
    pub fn extract<T: DeserializeOwned>(&self, section: Option<&str>) -> Result<T, ConfigError> {
        let result = match section {
            // A section nobody wrote (and without defaults) reads as empty.
            Some(s) => self.figment.focus(s).extract::<T>(),
            None => self.figment.extract::<T>(),
        };
        result.map_err(|e| self.invalid_value(e, section))
    }

    fn invalid_value(&self, error: figment::Error, section: Option<&str>) -> ConfigError {
        let mut path = error.path.clone();
        if let Some(s) = section {
            if path.first().map(String::as_str) != Some(s) {
                path.insert(0, s.to_owned());
            }
        }
        let key = path.join(".");
        let message = match &error.kind {
            figment::error::Kind::Message(m) => m.clone(),
            figment::error::Kind::MissingField(f) => {
                return ConfigError::Invalid {
                    source_name: self.source_of(&key),
                    key: if key.is_empty() {
                        f.to_string()
                    } else {
                        format!("{key}.{f}")
                    },
                    message: "a value is required".to_owned(),
                };
            }
            other => other.to_string(),
        };
        ConfigError::Invalid {
            source_name: self.source_of(&key),
            key,
            message,
        }
    }

    /// Where the effective value of `key` came from: `default`, `file PATH`,
    /// `env HERALD_…` or `flag --…`.
    pub fn source_of(&self, key: &str) -> String {
        let Some(metadata) = self.figment.find_metadata(key) else {
            return DEFAULT.to_owned();
        };
        let spec = keys::find(key);
        match metadata.name.as_ref() {
            ENV => spec.map_or_else(|| ENV.to_owned(), |k| format!("env {}", k.env_var())),
            FLAG => spec.map_or_else(|| FLAG.to_owned(), |k| format!("flag {}", k.flag())),
            FILE => match &self.file {
                Some(p) => format!("file {}", p.display()),
                None => FILE.to_owned(),
            },
            other => other.to_owned(),
        }
    }

    /// Every key with its effective value (secrets masked) and its source,
    /// one per line, in the table's order: what `check-config` prints.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for spec in KEYS {
            let shown = match self.figment.find_value(spec.key) {
                Err(_) => "(unset)".to_owned(),
                Ok(_) if spec.secret => "\"****\"".to_owned(),
                Ok(value) => render(&value),
            };
            out.push_str(&format!(
                "{} = {shown}  # {}\n",
                spec.key,
                self.source_of(spec.key)
            ));
        }
        out
    }
}

/// A value as TOML would write it.
fn render(value: &Value) -> String {
    match value {
        Value::String(_, s) => format!("{s:?}"),
        Value::Char(_, c) => format!("{:?}", c.to_string()),
        Value::Bool(_, b) => b.to_string(),
        Value::Num(_, n) => n
            .to_u128()
            .map(|n| n.to_string())
            .or_else(|| n.to_i128().map(|n| n.to_string()))
            .or_else(|| n.to_f64().map(|n| n.to_string()))
            .unwrap_or_default(),
        Value::Empty(_, _) => "(unset)".to_owned(),
        Value::Array(_, items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        Value::Dict(_, dict) => {
            let items: Vec<String> = dict
                .iter()
                .map(|(k, v)| format!("{k} = {}", render(v)))
                .collect();
            format!("{{ {} }}", items.join(", "))
        }
    }
}
