//! CEXL, Istio's attribute expression language: parsed and type-checked against the
//! attribute vocabulary when config loads, then evaluated per request without allocating.
//!
//! ```text
//! request.headers["x-user"] == "john" && source.labels["app"] | "" != "reviews"
//! match(destination.service.host, "*.svc.cluster.local")
//! conditional((context.reporter.kind | "inbound") == "outbound", "source", "destination")
//! ```
//!
//! Operators: `== != < <= > >= && || ! + |` (the last: the first operand that is present)
//! and `m[k]`. Functions: `match` (glob), `x.matches(re)`, `x.startsWith(s)`,
//! `x.endsWith(s)`, `ip`, `timestamp`, `email`, `uri`, `dnsName`, `conditional`,
//! `conditionalString`, `emptyStringMap`, `toLower`, `size`.

mod compile;
mod eval;
mod parse;

use std::fmt;
use std::sync::Arc;

pub use compile::AttributeFinder;
pub use eval::EvalError;

use crate::attribute::{AttrId, Bag, Value, ValueType};

/// A compiled expression.
#[derive(Debug)]
pub struct Expression {
    text: Arc<str>,
    node: eval::Node,
    ty: ValueType,
    attrs: Vec<AttrId>,
}

/// Why an expression was refused: a message pointing at a column of the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message} (in `{expression}`)")]
pub struct ExprError {
    /// The expression as written.
    pub expression: String,
    /// 1-based column (in characters) of the problem.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn expr_error(text: &str, pos: usize, message: String) -> ExprError {
    let column = text
        .get(..pos.min(text.len()))
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    ExprError {
        expression: text.to_string(),
        column,
        message,
    }
}

// === impl Expression ===

impl Expression {
    /// Parses and type-checks `text`.
    pub fn compile(text: &str, finder: &dyn AttributeFinder) -> Result<Self, ExprError> {
        let ast = parse::parse(text).map_err(|e| expr_error(text, e.pos, e.message))?;
        let mut attrs = Vec::new();
        let t = compile::compile(&ast, finder, &mut attrs)
            .map_err(|e| expr_error(text, e.pos, e.message))?;
        Ok(Self {
            text: text.into(),
            node: t.node,
            ty: t.ty,
            attrs,
        })
    }

    /// Like [`Expression::compile`], and the result must have type `expected`.
    pub fn compile_typed(
        text: &str,
        finder: &dyn AttributeFinder,
        expected: ValueType,
    ) -> Result<Self, ExprError> {
        let ast = parse::parse(text).map_err(|e| expr_error(text, e.pos, e.message))?;
        let mut attrs = Vec::new();
        let mut t = compile::compile(&ast, finder, &mut attrs)
            .map_err(|e| expr_error(text, e.pos, e.message))?;
        if expected == ValueType::String {
            t = compile::as_string(t);
        }
        if t.ty != expected {
            return Err(expr_error(
                text,
                0,
                format!("expression has type {}, expected {expected}", t.ty),
            ));
        }
        Ok(Self {
            text: text.into(),
            node: t.node,
            ty: t.ty,
            attrs,
        })
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The type it evaluates to.
    pub fn value_type(&self) -> ValueType {
        self.ty
    }

    /// The attributes it reads.
    pub fn attributes(&self) -> &[AttrId] {
        &self.attrs
    }

    /// The `ATTR == "literal"` terms (attribute, literal) of the conjunction at the top of a
    /// BOOL expression: it can only hold when each attribute has its literal's value.
    pub fn required_equalities(&self) -> Vec<(AttrId, &str)> {
        let mut out = Vec::new();
        self.node.required_equalities(&mut out);
        out
    }

    /// Evaluates over `bag`.
    #[inline]
    pub fn eval<'a>(&'a self, bag: &'a dyn Bag) -> Result<Value<'a>, EvalError> {
        self.node.eval(bag)
    }

    /// Evaluates over `bag`; `None` when the value is absent (an attribute or key missing
    /// at the top level, as under `|`).
    pub fn eval_opt<'a>(&'a self, bag: &'a dyn Bag) -> Result<Option<Value<'a>>, EvalError> {
        self.node.eval_opt(bag)
    }

    /// Evaluates a BOOL expression.
    #[inline]
    pub fn eval_bool(&self, bag: &dyn Bag) -> Result<bool, EvalError> {
        self.node.eval_bool(bag)
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::attribute::{DenseBag, Vocabulary, time};

    fn vocab() -> Vocabulary {
        let extra = serde_json::json!({"attributes": {
            "test.double": {"valueType": "DOUBLE"},
            "test.bool": {"valueType": "BOOL"},
            "test.email": {"valueType": "EMAIL_ADDRESS"},
            "test.dns": {"valueType": "DNS_NAME"},
            "test.uri": {"valueType": "URI"},
            "test.bytes": {"valueType": "BYTES"},
        }});
        let (v, errors) = Vocabulary::from_manifests([("test", &extra)]);
        assert!(errors.is_empty());
        v
    }

    struct Fixture {
        vocab: Vocabulary,
        headers: HashMap<String, String>,
        labels: HashMap<String, String>,
    }

    impl Fixture {
        fn new() -> Self {
            let headers = [
                ("x-user", "john"),
                ("x-empty", ""),
                ("cookie", "user=jason"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
            let labels = [("app", "reviews"), ("version", "v3")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Self {
                vocab: vocab(),
                headers,
                labels,
            }
        }

        fn bag(&self) -> DenseBag<'_> {
            let v = &self.vocab;
            let mut b = DenseBag::with_len(v.len());
            fn set<'b>(b: &mut DenseBag<'b>, v: &Vocabulary, n: &str, val: Value<'b>) {
                assert!(b.set_named(v, n, val), "{n}");
            }
            set(
                &mut b,
                v,
                "request.headers",
                Value::StringMap(&self.headers),
            );
            set(&mut b, v, "source.labels", Value::StringMap(&self.labels));
            set(
                &mut b,
                v,
                "request.path",
                Value::String("/api/v1/Items".into()),
            );
            set(&mut b, v, "request.size", Value::Int64(100));
            set(&mut b, v, "response.code", Value::Int64(503));
            set(
                &mut b,
                v,
                "response.duration",
                Value::Duration(Duration::from_millis(20)),
            );
            set(
                &mut b,
                v,
                "source.ip",
                Value::IpAddress("10.0.0.1".parse().unwrap()),
            );
            set(
                &mut b,
                v,
                "request.time",
                Value::Timestamp(time::parse_timestamp("2018-01-01T00:00:00Z").unwrap()),
            );
            set(
                &mut b,
                v,
                "destination.service.host",
                Value::String("ratings.default.svc.cluster.local".into()),
            );
            set(&mut b, v, "context.protocol", Value::String("http".into()));
            set(&mut b, v, "test.double", Value::Double(2.5));
            set(&mut b, v, "test.bool", Value::Bool(true));
            set(
                &mut b,
                v,
                "test.email",
                Value::EmailAddress("Joe@Example.com".into()),
            );
            set(
                &mut b,
                v,
                "test.dns",
                Value::DnsName("Foo.Example.com.".into()),
            );
            set(
                &mut b,
                v,
                "test.uri",
                Value::Uri("http://Example.com/a".into()),
            );
            set(&mut b, v, "test.bytes", Value::Bytes(vec![1, 2, 3].into()));
            b
        }
    }

    fn eval(f: &Fixture, text: &str) -> String {
        let e = Expression::compile(text, &f.vocab).unwrap_or_else(|e| panic!("{text}: {e}"));
        let bag = f.bag();
        match e.eval(&bag) {
            Ok(v) => v.to_string(),
            Err(err) => format!("error: {err}"),
        }
    }

    #[test]
    fn operators() {
        let f = Fixture::new();
        let cases = [
            (r#"request.headers["x-user"] == "john""#, "true"),
            (r#"request.headers["x-user"] != "john""#, "false"),
            (r#"request.headers["nope"] == """#, "true"),
            (r#"request.headers["nope"] | "dflt""#, "dflt"),
            (r#"request.headers["x-empty"] | "dflt""#, ""),
            (r#"source.name | source.namespace | "unknown""#, "unknown"),
            (r#"source.labels["app"] | "x""#, "reviews"),
            (r#"destination.labels["app"] | "x""#, "x"),
            ("response.code | 200", "503"),
            ("response.duration | \"0ms\"", "20ms"),
            (
                "request.time | timestamp(\"2017-01-01T00:00:00Z\")",
                "2018-01-01T00:00:00Z",
            ),
            ("true && false", "false"),
            ("true || false", "true"),
            ("!test.bool", "false"),
            ("request.size + 1", "101"),
            ("test.double + 0.5", "3"),
            (r#"request.path + "?q""#, "/api/v1/Items?q"),
            ("response.code >= 500", "true"),
            ("response.code < 500", "false"),
            ("request.size <= 100", "true"),
            ("test.double > 2.0", "true"),
            (r#""a" < "b""#, "true"),
            (r#"response.duration > "10ms""#, "true"),
            ("request.time > timestamp(\"2017-06-01T00:00:00Z\")", "true"),
            ("(response.code | 0) == 503", "true"),
            (
                r#"context.protocol == "http" || context.protocol == "grpc""#,
                "true",
            ),
            ("-1 + 2", "1"),
        ];
        for (text, want) in cases {
            assert_eq!(eval(&f, text), want, "{text}");
        }
    }

    #[test]
    fn functions() {
        let f = Fixture::new();
        let cases = [
            (r#"match(destination.service.host, "ratings.*")"#, "true"),
            (
                r#"match(destination.service.host, "*.cluster.local")"#,
                "true",
            ),
            (r#"match(destination.service.host, "reviews.*")"#, "false"),
            (r#"match("abc", "abc")"#, "true"),
            (r#"match(request.headers["cookie"], "user=*")"#, "true"),
            (r#""^/api/v[0-9]+/".matches(request.path)"#, "true"),
            (r#""^/admin".matches(request.path)"#, "false"),
            (
                r#"request.headers["x-user"].matches(request.headers["x-user"])"#,
                "true",
            ),
            (r#"request.path.startsWith("/api")"#, "true"),
            (r#"request.path.endsWith("Items")"#, "true"),
            (r#"request.headers["x-user"].startsWith("jo")"#, "true"),
            (r#"source.ip == ip("10.0.0.1")"#, "true"),
            (
                r#"ip(request.headers["x-user"] | "1.1.1.1") == ip("1.1.1.1")"#,
                "error: ip: not an IP address",
            ),
            (r#"test.email == email("Joe@example.COM")"#, "true"),
            (r#"test.dns == dnsName("foo.example.com")"#, "true"),
            (r#"test.uri == uri("http://example.com/a")"#, "true"),
            (
                r#"conditional(response.code >= 500, "error", "ok")"#,
                "error",
            ),
            (
                r#"conditional((context.reporter.kind | "inbound") == "outbound", "source", "destination")"#,
                "destination",
            ),
            (r#"conditionalString(false, "a", "b")"#, "b"),
            ("size(emptyStringMap())", "0"),
            ("size(source.labels)", "2"),
            (r#"size(request.path)"#, "13"),
            ("size(test.bytes)", "3"),
            (r#"destination.labels | emptyStringMap()"#, ""),
            (r#"toLower(request.path)"#, "/api/v1/items"),
            (r#"toLower("abc")"#, "abc"),
        ];
        for (text, want) in cases {
            assert_eq!(eval(&f, text), want, "{text}");
        }
    }

    #[test]
    fn missing_attributes_are_errors_outside_or() {
        let f = Fixture::new();
        assert_eq!(
            eval(&f, r#"source.name == "x""#),
            "error: lookup failed: 'source.name'"
        );
        assert_eq!(
            eval(&f, r#"destination.labels["app"] == "x""#),
            "error: lookup failed: 'destination.labels'"
        );
        let e = Expression::compile("source.name", &f.vocab).unwrap();
        assert!(e.eval_opt(&f.bag()).unwrap().is_none());
    }

    #[test]
    fn type_errors_point_into_the_expression() {
        let v = vocab();
        let cases = [
            (
                r#"request.hedaers["x"] == "y""#,
                1,
                "unknown attribute request.hedaers",
            ),
            (
                r#"request.size == "big""#,
                17,
                "==: operands have different types: INT64 and STRING",
            ),
            (
                r#"response.code | "x""#,
                17,
                "|: operands have different types",
            ),
            (
                r#"request.path && true"#,
                1,
                "operands of && must be BOOL, not STRING",
            ),
            (r#"request.path["x"]"#, 13, "cannot index a STRING"),
            (
                r#"request.headers[1]"#,
                17,
                "map key must be STRING, not INT64",
            ),
            (r#"nope(1)"#, 1, "unknown function nope"),
            (
                r#"startsWith(request.path, "x")"#,
                1,
                "startsWith is a method",
            ),
            (
                r#"request.path.toLower()"#,
                14,
                "toLower is a function, not a method",
            ),
            (
                r#"ip("not-an-ip")"#,
                4,
                r#"ip("not-an-ip"): not an IP address"#,
            ),
            (r#"timestamp("yesterday")"#, 11, "not an RFC 3339 timestamp"),
            (
                r#""[".matches(request.path)"#,
                1,
                "invalid regular expression",
            ),
            (
                r#"match(request.path)"#,
                1,
                "match takes 2 arguments, got 1",
            ),
            (
                r#"conditional(1, "a", "b")"#,
                13,
                "argument 1 of conditional must be BOOL",
            ),
            (
                r#"conditional(true, "a", 1)"#,
                24,
                "conditional: operands have different types",
            ),
            (
                r#"request.headers == request.headers"#,
                17,
                "cannot compare STRING_MAP",
            ),
            (
                r#"source.ip < source.ip"#,
                11,
                "< cannot compare IP_ADDRESS",
            ),
            (r#"test.bool + test.bool"#, 11, "+ cannot add BOOL"),
            (r#"!request.path"#, 1, "operand of ! must be BOOL"),
            (r#"size(1)"#, 6, "argument 1 of size must be"),
            (r#"request.size =="#, 16, "unexpected end of expression"),
        ];
        for (text, col, msg) in cases {
            let e = Expression::compile(text, &v).unwrap_err();
            assert_eq!(e.column, col, "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
            assert!(e.to_string().contains(text), "{e}");
        }
        let e = Expression::compile_typed("request.size", &v, ValueType::Bool).unwrap_err();
        assert!(e.message.contains("has type INT64, expected BOOL"), "{e}");
    }

    #[test]
    fn duration_literals_adapt_to_their_context() {
        let v = vocab();
        let e = Expression::compile(r#""10s""#, &v).unwrap();
        assert_eq!(e.value_type(), ValueType::Duration);
        let e = Expression::compile(r#"request.path == "0""#, &v).unwrap();
        assert_eq!(e.value_type(), ValueType::Bool);
        let e = Expression::compile_typed(r#""1h""#, &v, ValueType::String).unwrap();
        assert_eq!(e.value_type(), ValueType::String);
        let e = Expression::compile(r#""1""#, &v).unwrap();
        assert_eq!(e.value_type(), ValueType::String);
        let e = Expression::compile("1", &v).unwrap();
        assert_eq!(e.value_type(), ValueType::Int64);
    }

    #[test]
    fn referenced_attributes_are_listed() {
        let v = vocab();
        let e = Expression::compile(
            r#"request.headers["a"] == "b" && request.path == request.path"#,
            &v,
        )
        .unwrap();
        let names: Vec<&str> = e.attributes().iter().map(|id| v.name(*id)).collect();
        assert_eq!(names, ["request.headers", "request.path"]);
    }
}
