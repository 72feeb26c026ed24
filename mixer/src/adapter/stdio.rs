//! `stdio`: writes `logentry` (and `metric`) instances to stdout, stderr or a file, as JSON
//! (`outputAsJson: true`) or as tab-separated text.
//!
//! Each line carries `level` (the instance's `severity`, mapped through `severityLevels`),
//! `time`, `instance` and the instance's variables (or dimensions). Entries below
//! `outputLevel` are dropped.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;

use parking_lot::Mutex;
use serde_json::Value;

use super::params::{self, bad};
use super::{AdapterError, Handler, OwnedInstance};
use crate::attribute::Value as AttrValue;
use crate::attribute::time::format_timestamp;

const LEVELS: &[&str] = &["INFO", "WARNING", "ERROR"];
const STREAMS: &[&str] = &["STDOUT", "STDERR", "FILE", "ROTATED_FILE"];

#[derive(Debug)]
enum Sink {
    Stdout,
    Stderr,
    File(Mutex<File>),
}

/// The stdio handler.
#[derive(Debug)]
pub struct Stdio {
    json: bool,
    sink: Sink,
    min_level: usize,
    metric_level: usize,
    severity_levels: Vec<(String, usize)>,
}

// === impl Stdio ===

impl Stdio {
    /// Validates parameters and builds the handler (opening the file, if any).
    pub fn build(p: &Value) -> Result<Self, AdapterError> {
        params::only(
            p,
            "",
            &[
                "logStream",
                "severityLevels",
                "metricLevel",
                "outputAsJson",
                "outputLevel",
                "outputPath",
                "maxMegabytesBeforeRotation",
                "maxDaysBeforeRotation",
                "maxRotatedFiles",
            ],
        )?;
        let json = params::boolean(p, "outputAsJson", "outputAsJson")?.unwrap_or(false);
        let stream = params::enumeration(p, "logStream", "logStream", STREAMS)?.unwrap_or(0);
        let min_level = params::enumeration(p, "outputLevel", "outputLevel", LEVELS)?.unwrap_or(0);
        let metric_level =
            params::enumeration(p, "metricLevel", "metricLevel", LEVELS)?.unwrap_or(0);
        let mut severity_levels = Vec::new();
        match params::get(p, "severityLevels") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let level = match v {
                        Value::String(s) => LEVELS.iter().position(|l| l.eq_ignore_ascii_case(s)),
                        Value::Number(n) => {
                            n.as_u64().map(|n| n as usize).filter(|n| *n < LEVELS.len())
                        }
                        _ => None,
                    }
                    .ok_or_else(|| {
                        bad(
                            &format!("severityLevels.{k}"),
                            "must be INFO, WARNING or ERROR",
                        )
                    })?;
                    severity_levels.push((k.to_lowercase(), level));
                }
            }
            Some(_) => {
                return Err(bad(
                    "severityLevels",
                    "must be a mapping of severity to level",
                ));
            }
        }
        let sink = match stream {
            0 => Sink::Stdout,
            1 => Sink::Stderr,
            _ => {
                let path: PathBuf = params::string(p, "outputPath", "outputPath")?
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        bad(
                            "outputPath",
                            "required when logStream is FILE or ROTATED_FILE",
                        )
                    })?
                    .into();
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| {
                        bad("outputPath", format!("cannot open {}: {e}", path.display()))
                    })?;
                Sink::File(Mutex::new(file))
            }
        };
        Ok(Self {
            json,
            sink,
            min_level,
            metric_level,
            severity_levels,
        })
    }

    fn level_of(&self, severity: &str) -> usize {
        let s = severity.to_lowercase();
        if let Some((_, l)) = self.severity_levels.iter().find(|(k, _)| *k == s) {
            return *l;
        }
        match s.as_str() {
            "warning" | "warn" => 1,
            "error" | "fatal" | "critical" | "alert" | "emergency" => 2,
            _ => 0,
        }
    }

    /// Appends the line of `inst` (if its level is logged) to `out`.
    fn line(&self, inst: &OwnedInstance, out: &mut String) {
        let is_metric = inst.instance.template == "metric";
        let level = if is_metric {
            self.metric_level
        } else {
            match inst.get("severity") {
                Some(AttrValue::String(s)) => self.level_of(&s),
                _ => 0,
            }
        };
        if level < self.min_level {
            return;
        }
        let time = match inst.get("timestamp") {
            Some(AttrValue::Timestamp(t)) => format_timestamp(t),
            _ => format_timestamp(std::time::SystemTime::now()),
        };
        let prefix = if is_metric {
            "dimensions."
        } else {
            "variables."
        };
        let level_name = ["info", "warn", "error"][level];
        let mut fields: Vec<(&str, AttrValue<'_>)> = inst
            .fields()
            .filter_map(|(n, v)| Some((n.strip_prefix(prefix)?, v)))
            .collect();
        if is_metric && let Some(v) = inst.get("value") {
            fields.push(("value", v));
        }
        fields.sort_by(|a, b| a.0.cmp(b.0));
        if self.json {
            out.push_str("{\"level\":\"");
            out.push_str(level_name);
            out.push_str("\",\"time\":\"");
            out.push_str(&time);
            out.push_str("\",\"instance\":");
            json_string(out, &inst.instance.name);
            let mut text = String::new();
            for (k, v) in fields {
                out.push(',');
                json_string(out, k);
                out.push(':');
                match v {
                    AttrValue::Int64(_) | AttrValue::Bool(_) => v.write_text(out),
                    AttrValue::Double(d) if d.is_finite() => v.write_text(out),
                    AttrValue::StringMap(_) => out.push_str(&v.to_json().to_string()),
                    other => {
                        text.clear();
                        other.write_text(&mut text);
                        json_string(out, &text);
                    }
                }
            }
            out.push_str("}\n");
        } else {
            out.push_str(&time);
            out.push('\t');
            out.push_str(level_name);
            out.push('\t');
            out.push_str(&inst.instance.name);
            for (k, v) in fields {
                out.push('\t');
                out.push_str(k);
                out.push('=');
                v.write_text(out);
            }
            out.push('\n');
        }
    }
}

/// Appends `s` as a JSON string.
fn json_string(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

impl Handler for Stdio {
    fn report(&self, batch: &[OwnedInstance]) {
        let mut out = String::new();
        for inst in batch {
            self.line(inst, &mut out);
        }
        if out.is_empty() {
            return;
        }
        let result = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(out.as_bytes()),
            Sink::Stderr => std::io::stderr().lock().write_all(out.as_bytes()),
            Sink::File(f) => f.lock().write_all(out.as_bytes()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "stdio adapter cannot write");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_names_fields() {
        assert!(Stdio::build(&json!({"outputAsJson": true})).is_ok());
        let e = Stdio::build(&json!({"logStream": "FILE"})).unwrap_err();
        assert_eq!(e.field, "outputPath");
        let e = Stdio::build(&json!({"severityLevels": {"info": "LOUD"}})).unwrap_err();
        assert_eq!(e.field, "severityLevels.info");
        let e = Stdio::build(&json!({"outputLevel": "DEBUG"})).unwrap_err();
        assert_eq!(e.field, "outputLevel");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n\u{1}");
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\n\u{1}");
    }
}
