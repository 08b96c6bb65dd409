//! The broker's optional config file: TOML, one key per command-line flag (`listen = "0.0.0.0:7878"` is
//! `--listen 0.0.0.0:7878`, `no_relay = true` is `--no-relay`). Flags and environment variables override it;
//! without one, the embedded defaults apply. This module only reads the file into flags: which of them win
//! is decided where the flags are parsed (`main.rs`), and every value is checked there as a flag would be.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// What a flag takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A value (`--listen ADDR`).
    Value,
    /// A switch (`--no-relay`): the key is `true` or `false`.
    Switch,
}

/// A flag the file may set: its key (the flag's name with `_`), its `--flag` spelling, and what it takes.
#[derive(Debug, Clone)]
pub struct Known {
    pub key: String,
    pub long: String,
    pub kind: Kind,
}

/// Why a config file cannot be used; every message names the file, and the key where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {cause}")]
    Read { path: PathBuf, cause: std::io::Error },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} has an unknown key `{key}`; known keys: {known}")]
    UnknownKey { path: PathBuf, key: String, known: String },
    #[error("the config file {path}: key `{key}` {problem}")]
    BadValue { path: PathBuf, key: String, problem: String },
}

/// One key of the file as flags: the key, and the arguments it stands for (empty for a switch set false).
#[derive(Debug, PartialEq, Eq)]
pub struct Setting {
    pub key: String,
    pub args: Vec<OsString>,
}

/// Reads `path` and turns its keys into flags (in key order; each flag is set once, so order does not matter).
pub fn read(path: &Path, known: &[Known]) -> Result<Vec<Setting>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read { path: path.into(), cause })?;
    parse(path, &text, known)
}

/// [`read`] on text already read.
pub fn parse(path: &Path, text: &str, known: &[Known]) -> Result<Vec<Setting>, ConfigError> {
    let table: toml::Table =
        text.parse().map_err(|e: toml::de::Error| ConfigError::Syntax { path: path.into(), message: e.to_string() })?;
    let mut out = Vec::with_capacity(table.len());
    for (key, value) in table {
        // `group-posts-per-second` is accepted too, as the flag spells it.
        let Some(flag) = known.iter().find(|k| k.key == key.replace('-', "_")) else {
            let known = known.iter().map(|k| k.key.as_str()).collect::<Vec<_>>().join(", ");
            return Err(ConfigError::UnknownKey { path: path.into(), key, known });
        };
        let bad =
            |problem: &str| ConfigError::BadValue { path: path.into(), key: key.clone(), problem: problem.into() };
        let args = match (flag.kind, &value) {
            (Kind::Switch, toml::Value::Boolean(true)) => vec![OsString::from(&flag.long)],
            (Kind::Switch, toml::Value::Boolean(false)) => Vec::new(),
            (Kind::Switch, _) => return Err(bad("must be true or false")),
            (Kind::Value, toml::Value::String(s)) => vec![OsString::from(&flag.long), OsString::from(s)],
            (Kind::Value, toml::Value::Integer(i)) => vec![OsString::from(&flag.long), OsString::from(i.to_string())],
            (Kind::Value, toml::Value::Float(f)) => vec![OsString::from(&flag.long), OsString::from(f.to_string())],
            (Kind::Value, toml::Value::Boolean(_)) => return Err(bad("takes a value, not true or false")),
            (Kind::Value, _) => return Err(bad("takes a single value (a string or a number)")),
        };
        out.push(Setting { key: flag.key.clone(), args });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<Known> {
        vec![
            Known { key: "listen".into(), long: "--listen".into(), kind: Kind::Value },
            Known { key: "token_ttl_days".into(), long: "--token-ttl-days".into(), kind: Kind::Value },
            Known { key: "no_relay".into(), long: "--no-relay".into(), kind: Kind::Switch },
        ]
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn keys_become_flags() {
        let text = "listen = \"127.0.0.1:7878\"\ntoken-ttl-days = 7\nno_relay = true\n";
        let mut got = parse(Path::new("b.toml"), text, &known()).unwrap();
        got.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            got,
            vec![
                Setting { key: "listen".into(), args: args(&["--listen", "127.0.0.1:7878"]) },
                Setting { key: "no_relay".into(), args: args(&["--no-relay"]) },
                Setting { key: "token_ttl_days".into(), args: args(&["--token-ttl-days", "7"]) },
            ]
        );
        let off = parse(Path::new("b.toml"), "no_relay = false", &known()).unwrap();
        assert_eq!(off, vec![Setting { key: "no_relay".into(), args: vec![] }]);
    }

    #[test]
    fn every_error_names_the_file_and_the_key() {
        let path = Path::new("/etc/p2pim/broker.toml");
        for (text, needles) in [
            ("lissten = \"x\"", &["/etc/p2pim/broker.toml", "`lissten`", "known keys: listen"][..]),
            ("no_relay = \"yes\"", &["/etc/p2pim/broker.toml", "`no_relay`", "true or false"][..]),
            ("listen = [1, 2]", &["/etc/p2pim/broker.toml", "`listen`", "single value"][..]),
            ("listen = true", &["`listen`", "takes a value"][..]),
            ("listen = ", &["/etc/p2pim/broker.toml", "not valid TOML"][..]),
        ] {
            let e = parse(path, text, &known()).unwrap_err().to_string();
            for n in needles {
                assert!(e.contains(n), "{text:?}: {e}");
            }
        }
    }
}
