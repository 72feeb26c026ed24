//! `${VAR}` expansion of host paths in the spec.
//!
//! `${NAME}` is the variable's value, an error when it is unset; `${NAME:-default}` is the
//! default (itself expanded) when the variable is unset or empty; `$$` is a literal `$`.
//! Any other `$` is an error, so a typo never turns into a path silently.

use std::collections::BTreeMap;

/// Where variables come from: the build's own (such as `PROFILE_DIR`) before the environment.
#[derive(Debug, Clone, Default)]
pub struct Vars {
    own: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
}

impl Vars {
    /// The build's own variables over a snapshot of the process environment.
    pub fn from_env(own: BTreeMap<String, String>) -> Vars {
        Vars {
            own,
            env: std::env::vars().collect(),
        }
    }

    /// Only these variables (no environment), for tests.
    pub fn only(own: BTreeMap<String, String>) -> Vars {
        Vars {
            own,
            env: BTreeMap::new(),
        }
    }

    /// A variable's value; the build's own win over the environment.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.own
            .get(name)
            .or_else(|| self.env.get(name))
            .map(String::as_str)
    }

    /// `text` with every `${...}` replaced; the error says which variable or what syntax.
    pub fn expand(&self, text: &str) -> Result<String, String> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix('{') else {
                return Err(format!(
                    "a bare $ in {text:?}: write ${{NAME}} for a variable, $$ for a dollar sign"
                ));
            };
            let end = closing_brace(body).ok_or_else(|| format!("unclosed ${{ in {text:?}"))?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (inner, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad variable name {name:?} in {text:?}"));
            }
            // An empty value counts as unset where there is a default, as in the shell.
            let value = self
                .get(name)
                .filter(|value| !value.is_empty() || default.is_none());
            match (value, default) {
                (Some(value), _) => out.push_str(value),
                (None, Some(default)) => out.push_str(&self.expand(default)?),
                (None, None) => return Err(format!("variable {name} is not set")),
            }
            rest = &body[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// The index of the `}` that closes a `${` whose body starts `body`, counting nested `${`.
fn closing_brace(body: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::only(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn expands_variables_defaults_and_dollars() {
        let v = vars(&[("HOME", "/root"), ("EMPTY", ""), ("BIN", "/x/envoy")]);
        assert_eq!(v.expand("${BIN}").unwrap(), "/x/envoy");
        assert_eq!(v.expand("a/${BIN}/b").unwrap(), "a//x/envoy/b");
        assert_eq!(
            v.expand("${MESH_CACHE:-${HOME}/.cache/mesh}/bin").unwrap(),
            "/root/.cache/mesh/bin"
        );
        assert_eq!(v.expand("${EMPTY:-d}").unwrap(), "d");
        assert_eq!(v.expand("${EMPTY}").unwrap(), "");
        assert_eq!(v.expand("$$5").unwrap(), "$5");
        assert_eq!(v.expand("plain").unwrap(), "plain");
    }

    #[test]
    fn refuses_unset_variables_and_bad_syntax() {
        let v = vars(&[]);
        assert_eq!(
            v.expand("${ENVOY_BIN}").unwrap_err(),
            "variable ENVOY_BIN is not set"
        );
        assert!(v.expand("$HOME").unwrap_err().contains("bare $"));
        assert!(v.expand("${HOME").unwrap_err().contains("unclosed"));
        assert!(
            v.expand("${A B}")
                .unwrap_err()
                .contains("bad variable name")
        );
        assert!(v.expand("${}").unwrap_err().contains("bad variable name"));
    }

    #[test]
    fn own_variables_win_over_the_environment() {
        let mut v = vars(&[("PROFILE_DIR", "/t/release")]);
        v.env.insert("PROFILE_DIR".into(), "/elsewhere".into());
        v.env.insert("OTHER".into(), "o".into());
        assert_eq!(v.expand("${PROFILE_DIR}").unwrap(), "/t/release");
        assert_eq!(v.expand("${OTHER}").unwrap(), "o");
    }
}
