//! The `--config FILE` YAML that holds what an operator tunes.
//!
//! Each binary defines its own settings struct; flags (and their environment variables) win over
//! the file, and the file wins over built-in defaults. This module only loads the file, with an
//! error that names the file and the field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Errors loading a settings file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The file cannot be read.
    #[error("cannot read settings file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file does not match the settings schema; `field` names where.
    #[error("settings file {path}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
}

/// Loads settings of type `T` from `path`, or `T::default()` when no file is given.
///
/// Use `#[serde(deny_unknown_fields)]` on `T` so a misspelt key is an error, not a silent no-op.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, SettingsError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(path, &text)
}

/// Parses settings text; `path` is used for messages only.
pub fn parse<T: DeserializeOwned + Default>(path: &Path, text: &str) -> Result<T, SettingsError> {
    if text.trim().is_empty() {
        return Ok(T::default());
    }
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| SettingsError::Invalid {
        path: path.to_path_buf(),
        field: e.path().to_string(),
        message: e.into_inner().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct S {
        grpc_addr: Option<String>,
        #[allow(dead_code)]
        nested: Option<Nested>,
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Nested {
        #[allow(dead_code)]
        n: u32,
    }

    #[test]
    fn loads_and_names_bad_fields() {
        let p = Path::new("x.yaml");
        let s: S = parse(p, "grpcAddr: 1.2.3.4:5\n").unwrap();
        assert_eq!(s.grpc_addr.as_deref(), Some("1.2.3.4:5"));
        let e = parse::<S>(p, "nested:\n  n: nope\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml") && e.contains("nested.n"), "{e}");
        let e = parse::<S>(p, "grpcAdr: x\n").unwrap_err().to_string();
        assert!(e.contains("grpcAdr"), "{e}");
        let s: S = parse(p, "").unwrap();
        assert!(s.grpc_addr.is_none());
    }
}
