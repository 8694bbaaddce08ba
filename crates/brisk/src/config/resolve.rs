//! Resolution of preset + TOML file + `--set` overrides into a checked [`Config`].

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{Config, Preset};
use crate::error::{Error, Result};

/// Where a config comes from, in increasing precedence.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// `--preset NAME`; without it, the file's `preset` key, else `tiny`.
    pub preset: Option<String>,
    /// `--config FILE`.
    pub file: Option<PathBuf>,
    /// `key.path=value` overrides, applied in order (later wins).
    pub sets: Vec<String>,
}

/// Builds the config: preset, then file, then overrides, then validation.
/// An error about a value names the config file it may have come from.
pub fn resolve(source: &ConfigSource) -> Result<Config> {
    layer(source).map_err(|e| match (&source.file, e) {
        (Some(path), Error::Config(message)) if !message.contains(&path.display().to_string()) => {
            Error::Config(format!("{message} (config file {})", path.display()))
        }
        (_, e) => e,
    })
}

fn layer(source: &ConfigSource) -> Result<Config> {
    let file_table = match &source.file {
        Some(path) => Some(read_table(path)?),
        None => None,
    };
    let preset_name = match (&source.preset, &file_table) {
        (Some(name), _) => name.clone(),
        (None, Some(table)) => match table.get("preset") {
            Some(Value::String(name)) => name.clone(),
            Some(other) => {
                return Err(Error::Config(format!(
                    "`preset` in {}: expected a preset name, got {other}",
                    source.file.as_ref().unwrap().display()
                )))
            }
            None => Preset::Tiny.name().to_string(),
        },
        (None, None) => Preset::Tiny.name().to_string(),
    };
    let preset = Preset::from_name(&preset_name)?;
    let mut tree = Table::try_from(preset.config()).expect("a preset always serialises");

    if let (Some(table), Some(path)) = (file_table, &source.file) {
        let origin = format!("in {}", path.display());
        merge_file(&mut tree, table, "", &origin)?;
    }
    for set in &source.sets {
        apply_set(&mut tree, set)?;
    }

    let config: Config = serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        Error::Config(format!(
            "bad value for `{}`: {}",
            e.path(),
            e.inner().message()
        ))
    })?;
    config.validate()?;
    Ok(config)
}

/// Any config with defaults (the tagger's, say): `defaults`, then the
/// file's keys, then `--set` overrides, each key checked against the
/// defaults' (arrays such as `[[embeddings]]` are replaced whole).
pub fn layered<T: serde::Serialize + serde::de::DeserializeOwned>(
    defaults: &T,
    file: Option<&Path>,
    sets: &[String],
) -> Result<T> {
    let mut tree = Table::try_from(defaults).expect("defaults serialise");
    if let Some(path) = file {
        let origin = format!("in {}", path.display());
        merge_file(&mut tree, read_table(path)?, "", &origin)?;
    }
    for set in sets {
        apply_set(&mut tree, set)?;
    }
    serde_path_to_error::deserialize(Value::Table(tree)).map_err(|e| {
        Error::Config(format!(
            "bad value for `{}`: {}",
            e.path(),
            e.inner().message()
        ))
    })
}

fn read_table(path: &Path) -> Result<Table> {
    let text = std::fs::read_to_string(path)
        .map(crate::run::strip_bom)
        .map_err(|e| Error::Config(format!("cannot read config file {}: {e}", path.display())))?;
    text.parse::<Table>()
        .map_err(|e| Error::Config(format!("{} is not valid TOML: {e}", path.display())))
}

/// Copies every leaf of `file` onto `tree`, checking keys and types.
fn merge_file(tree: &mut Table, file: Table, prefix: &str, origin: &str) -> Result<()> {
    for (key, value) in file {
        if prefix.is_empty() && key == "preset" {
            continue; // already used to pick the base preset
        }
        let path = join(prefix, &key);
        match value {
            Value::Table(inner) => {
                if !matches!(lookup_mut(tree, &path)?, Value::Table(_)) {
                    return Err(Error::Config(format!(
                        "`{path}` {origin}: is a value, not a section"
                    )));
                }
                merge_file(tree, inner, &path, origin)?;
            }
            leaf => {
                let target = lookup_mut(tree, &path)?;
                *target = coerce(&path, target, leaf, origin)?;
            }
        }
    }
    Ok(())
}

/// Applies one `key.path=value` override.
fn apply_set(tree: &mut Table, set: &str) -> Result<()> {
    let Some((path, raw)) = set.split_once('=') else {
        return Err(Error::Config(format!(
            "--set {set:?}: expected key.path=value, e.g. --set train.learning_rate=3e-4"
        )));
    };
    let path = path.trim();
    let target = lookup_mut(tree, path)?;
    let value = parse_raw(target, raw.trim());
    *target = coerce(path, target, value, "in --set")?;
    Ok(())
}

/// Finds an existing key by its dotted path; unknown keys are errors that
/// list what the enclosing section does have.
fn lookup_mut<'a>(tree: &'a mut Table, path: &str) -> Result<&'a mut Value> {
    let mut parts = path.split('.').peekable();
    let mut table = tree;
    let mut walked = String::new();
    loop {
        let part = parts.next().unwrap_or_default();
        if !table.contains_key(part) {
            let mut known: Vec<&str> = table.keys().map(String::as_str).collect();
            known.sort_unstable();
            let section = if walked.is_empty() {
                "the top level".to_string()
            } else {
                format!("[{walked}]")
            };
            return Err(Error::Config(format!(
                "unknown config key `{path}` ({section} has: {})",
                known.join(", ")
            )));
        }
        walked = join(&walked, part);
        let value = table.get_mut(part).unwrap();
        if parts.peek().is_none() {
            return Ok(value);
        }
        match value {
            Value::Table(inner) => table = inner,
            _ => {
                return Err(Error::Config(format!(
                    "unknown config key `{path}` (`{walked}` is a value, not a section)"
                )))
            }
        }
    }
}

/// Reads an override's text as the kind of value the field holds.
fn parse_raw(existing: &Value, raw: &str) -> Value {
    let quoted = raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"');
    if matches!(existing, Value::String(_)) && !quoted {
        return Value::String(raw.to_string());
    }
    match format!("v = {raw}").parse::<Table>() {
        Ok(mut table) => table
            .remove("v")
            .unwrap_or_else(|| Value::String(raw.into())),
        Err(_) => Value::String(raw.to_string()),
    }
}

/// Accepts `value` for a field currently holding `existing` when the types
/// agree (an integer is accepted where a float is expected).
fn coerce(path: &str, existing: &Value, value: Value, origin: &str) -> Result<Value> {
    match (existing, value) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Table(_), _) => Err(Error::Config(format!(
            "`{path}` {origin} is a section: set its keys instead, e.g. `{path}.<key>=...`"
        ))),
        (existing, value) if std::mem::discriminant(existing) == std::mem::discriminant(&value) => {
            Ok(value)
        }
        (existing, value) => Err(Error::Config(format!(
            "bad value for `{path}` {origin}: expected {}, got {value}",
            type_name(existing)
        ))),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a section",
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Norm;

    fn sets(list: &[&str]) -> ConfigSource {
        ConfigSource {
            sets: list.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn error_of(source: &ConfigSource) -> String {
        let err = resolve(source).unwrap_err();
        assert!(err.is_usage(), "config errors are usage errors: {err}");
        err.to_string()
    }

    #[test]
    fn default_is_tiny() {
        assert_eq!(
            resolve(&ConfigSource::default()).unwrap(),
            Preset::Tiny.config()
        );
    }

    #[test]
    fn unknown_key_names_it_and_lists_the_section() {
        let msg = error_of(&sets(&["model.hiden_size=64"]));
        assert!(msg.contains("`model.hiden_size`"), "{msg}");
        assert!(msg.contains("hidden_size"), "lists the known keys: {msg}");
        let msg = error_of(&sets(&["modle.hidden_size=64"]));
        assert!(
            msg.contains("`modle.hidden_size`") && msg.contains("model"),
            "{msg}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let msg = error_of(&sets(&["model.hidden_size=big"]));
        assert!(
            msg.contains("`model.hidden_size`") && msg.contains("integer"),
            "{msg}"
        );
        let msg = error_of(&sets(&["model.norm=middle"]));
        assert!(msg.contains("model.norm") && msg.contains("pre"), "{msg}");
        let msg = error_of(&sets(&["model.hidden_size=-5"]));
        assert!(msg.contains("model.hidden_size"), "{msg}");
        let msg = error_of(&sets(&["model.hidden_size=129"]));
        assert!(msg.contains("num_attention_heads"), "{msg}");
        let msg = error_of(&sets(&["train.budget=later"]));
        assert!(msg.contains("train.budget"), "{msg}");
        let msg = error_of(&sets(&["model=3"]));
        assert!(msg.contains("section"), "{msg}");
        let msg = error_of(&sets(&["train.learning_rate"]));
        assert!(msg.contains("key.path=value"), "{msg}");
    }

    #[test]
    fn set_overrides_file_overrides_preset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("run.toml");
        std::fs::write(
            &file,
            "preset = \"mini\"\n[train]\nlearning_rate = 1\nbatch_size = 8\n[model]\nnorm = \"pre\"\n",
        )
        .unwrap();
        let source = ConfigSource {
            preset: None,
            file: Some(file.clone()),
            sets: vec!["train.batch_size=4".into(), "train.batch_size=16".into()],
        };
        let config = resolve(&source).unwrap();
        assert_eq!(config.preset, "mini", "the file picks the base preset");
        assert_eq!(config.model.hidden_size, 256, "from the mini preset");
        assert_eq!(config.model.norm, Norm::Pre, "from the file");
        assert_eq!(config.train.learning_rate, 1.0, "integer accepted as float");
        assert_eq!(
            config.train.batch_size, 16,
            "the last --set wins over the file"
        );

        let flag = ConfigSource {
            preset: Some("tiny".into()),
            ..source
        };
        assert_eq!(
            resolve(&flag).unwrap().model.hidden_size,
            128,
            "--preset wins"
        );
    }

    #[test]
    fn file_errors_name_the_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[train]\nlearning_rat = 0.1\n").unwrap();
        let source = ConfigSource {
            file: Some(file.clone()),
            ..Default::default()
        };
        let msg = error_of(&source);
        assert!(msg.contains("train.learning_rat"), "{msg}");
        std::fs::write(&file, "[train]\nbatch_size = \"lots\"\n").unwrap();
        let msg = error_of(&source);
        assert!(
            msg.contains("train.batch_size") && msg.contains("bad.toml"),
            "{msg}"
        );
        std::fs::write(&file, "[train\n").unwrap();
        let msg = error_of(&source);
        assert!(msg.contains("bad.toml") && msg.contains("TOML"), "{msg}");
    }

    #[test]
    fn strings_need_no_quotes_and_resolved_config_round_trips() {
        let config = resolve(&sets(&[
            "data.corpus=/tmp/my corpus",
            "model.position=tupe-r",
        ]))
        .unwrap();
        assert_eq!(config.data.corpus, "/tmp/my corpus");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, config.to_toml()).unwrap();
        let again = resolve(&ConfigSource {
            file: Some(file),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(again, config);
    }
}
