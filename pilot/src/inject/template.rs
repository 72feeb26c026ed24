//! The template's placeholder syntax, and its rendering.
//!
//! A template is a YAML fragment, parsed first and rendered as a tree, so no value (an
//! annotation's, say) can ever change the YAML's structure:
//!
//! - `${name}` in a string is replaced by the value `name`. A string that is *only* one
//!   placeholder takes the value's type (`runAsUser: ${proxyUID}` gives the number 1337,
//!   `add: ${proxyCapabilities}` a list); inside a longer string a value is written as text
//!   (a string as is, anything else as JSON). `${name:string}` is always text, even alone
//!   (`- ${proxyUID:string}` in `args` gives `"1337"`). Names are `[A-Za-z_][A-Za-z0-9_]*`.
//! - A value that is `null` removes the key (or list item) whose whole string it is, and a
//!   mapping left empty by such removals goes too (`limits: {cpu: ${proxyCPULimit}}` with no
//!   limit set gives no `limits` at all). Inside a longer string `null` is empty text.
//! - `$when: ${name}` in a mapping keeps that mapping only when the value is true: `true`, a
//!   number other than 0, a non-empty list or mapping, or a string other than `""` and
//!   `"false"`. The `$when` key itself never reaches the output.
//! - `$${` is a literal `${`; a `$` before anything else is itself.
//! - Keys are not rendered. An unknown name, or a `${` without its `}`, is an error naming the
//!   place in the template.

use serde_json::{Map, Value};

use super::InjectError;

/// The values a template is rendered with, by placeholder name.
pub type Values = Map<String, Value>;

/// The key that makes a mapping conditional.
pub const WHEN: &str = "$when";

/// Renders `template` with `values`. `None` when the whole template is removed (a `null`
/// placeholder or a false `$when` at its root).
pub fn render(template: &Value, values: &Values) -> Result<Option<Value>, InjectError> {
    render_at(template, values, &mut String::new())
}

/// Every placeholder name in `template`, in order of appearance (with repeats).
pub fn placeholders(template: &Value) -> Result<Vec<String>, InjectError> {
    let mut out = Vec::new();
    collect(template, &mut String::new(), &mut out)?;
    Ok(out)
}

fn collect(v: &Value, path: &mut String, out: &mut Vec<String>) -> Result<(), InjectError> {
    match v {
        Value::String(s) => {
            for piece in parse(s, path)? {
                if let Piece::Name(n, _) = piece {
                    out.push(n.to_string());
                }
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                with_path(path, &format!("[{i}]"), |p| collect(item, p, out))?;
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                with_path(path, &key_segment(path, k), |p| collect(item, p, out))?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn render_at(v: &Value, values: &Values, path: &mut String) -> Result<Option<Value>, InjectError> {
    match v {
        Value::String(s) => render_string(s, values, path),
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                if let Some(r) = with_path(path, &format!("[{i}]"), |p| render_at(item, values, p))?
                {
                    out.push(r);
                }
            }
            Ok(Some(Value::Array(out)))
        }
        Value::Object(map) => {
            if let Some(cond) = map.get(WHEN) {
                let cond = with_path(path, &key_segment(path, WHEN), |p| {
                    render_at(cond, values, p)
                })?;
                if !cond.as_ref().is_some_and(truthy) {
                    return Ok(None);
                }
            }
            let mut out = Map::new();
            for (k, item) in map {
                if k == WHEN {
                    continue;
                }
                if let Some(r) =
                    with_path(path, &key_segment(path, k), |p| render_at(item, values, p))?
                {
                    out.insert(k.clone(), r);
                }
            }
            // Emptied by removals: removed too. Written empty: kept.
            let emptied = out.is_empty() && map.keys().any(|k| k != WHEN);
            Ok((!emptied).then_some(Value::Object(out)))
        }
        other => Ok(Some(other.clone())),
    }
}

fn render_string(s: &str, values: &Values, path: &str) -> Result<Option<Value>, InjectError> {
    let pieces = parse(s, path)?;
    let lookup = |name: &str| {
        values.get(name).ok_or_else(|| InjectError::Template {
            path: display_path(path),
            reason: format!("unknown placeholder ${{{name}}}"),
        })
    };
    if let [Piece::Name(name, false)] = pieces.as_slice() {
        let v = lookup(name)?;
        return Ok((!v.is_null()).then(|| v.clone()));
    }
    let mut out = String::with_capacity(s.len());
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(&t),
            Piece::Name(name, _) => match lookup(name)? {
                Value::String(v) => out.push_str(v),
                Value::Null => {}
                other => out.push_str(&other.to_string()),
            },
        }
    }
    Ok(Some(Value::String(out)))
}

/// A string's literal text and placeholders.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Text(String),
    /// A name, and whether it is forced to text (`:string`).
    Name(&'a str, bool),
}

fn parse<'a>(s: &'a str, path: &str) -> Result<Vec<Piece<'a>>, InjectError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(at) = rest.find('$') {
        text.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(escaped) = after.strip_prefix("${") {
            text.push_str("${");
            rest = escaped;
        } else if let Some(open) = after.strip_prefix('{') {
            let Some(end) = open.find('}') else {
                return Err(InjectError::Template {
                    path: display_path(path),
                    reason: format!("{s:?}: `${{` without its `}}`"),
                });
            };
            let (name, as_text) = match open[..end].strip_suffix(":string") {
                Some(name) => (name, true),
                None => (&open[..end], false),
            };
            if !valid_name(name) {
                return Err(InjectError::Template {
                    path: display_path(path),
                    reason: format!("{s:?}: ${{{name}}} is not a placeholder name"),
                });
            }
            if !text.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text)));
            }
            pieces.push(Piece::Name(name, as_text));
            rest = &open[end + 1..];
        } else {
            text.push('$');
            rest = after;
        }
    }
    text.push_str(rest);
    if !text.is_empty() || pieces.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Whether a `$when` value keeps its mapping.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty() && s != "false",
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn key_segment(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!(".{key}")
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "(root)".into()
    } else {
        path.to_string()
    }
}

/// Runs `f` with `segment` appended to `path`, then restores `path`.
fn with_path<T>(path: &mut String, segment: &str, f: impl FnOnce(&mut String) -> T) -> T {
    let len = path.len();
    path.push_str(segment);
    let out = f(path);
    path.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn values() -> Values {
        json!({"uid": 1337, "image": "docker.io/mesh/proxy:1", "none": null, "caps": ["NET_ADMIN"],
               "yes": true, "no": false})
        .as_object()
        .cloned()
        .unwrap()
    }

    fn r(t: Value) -> Result<Option<Value>, InjectError> {
        render(&t, &values())
    }

    #[test]
    fn whole_placeholders_keep_their_type() {
        assert_eq!(
            r(json!({"a": "${uid}", "b": "${caps}", "c": "${image}", "d": "${uid:string}"}))
                .unwrap(),
            Some(
                json!({"a": 1337, "b": ["NET_ADMIN"], "c": "docker.io/mesh/proxy:1", "d": "1337"})
            )
        );
    }

    #[test]
    fn embedded_placeholders_are_text() {
        assert_eq!(
            r(json!([
                "-u ${uid}",
                "x${none}y",
                "${image}/${uid}",
                "$${uid}",
                "a$b$"
            ]))
            .unwrap(),
            Some(json!([
                "-u 1337",
                "xy",
                "docker.io/mesh/proxy:1/1337",
                "${uid}",
                "a$b$"
            ]))
        );
    }

    #[test]
    fn null_removes_and_empties_cascade() {
        assert_eq!(
            r(json!({"limits": {"cpu": "${none}"}, "keep": {}, "l": ["${none}", 1]})).unwrap(),
            Some(json!({"keep": {}, "l": [1]}))
        );
    }

    #[test]
    fn when_keeps_or_drops() {
        let t = json!([{"$when": "${yes}", "n": 1}, {"$when": "${no}", "n": 2},
                       {"$when": "${none}", "n": 3}, {"$when": "false", "n": 4}]);
        assert_eq!(r(t).unwrap(), Some(json!([{"n": 1}])));
    }

    #[test]
    fn errors_name_the_place() {
        let e = r(json!({"a": [{"b": "${nope}"}]})).unwrap_err().to_string();
        assert!(e.contains("a[0].b") && e.contains("${nope}"), "{e}");
        let e = r(json!({"a": "${uid"})).unwrap_err().to_string();
        assert!(e.contains("without its"), "{e}");
        let e = r(json!({"a": "${1x}"})).unwrap_err().to_string();
        assert!(e.contains("not a placeholder name"), "{e}");
    }

    #[test]
    fn placeholders_are_listed() {
        let t = json!({"a": ["${uid} ${image}"], "b": {"$when": "${yes}"}});
        assert_eq!(placeholders(&t).unwrap(), ["uid", "image", "yes"]);
    }
}
