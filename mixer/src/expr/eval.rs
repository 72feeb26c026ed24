//! Evaluation of compiled expressions over a [`Bag`].
//!
//! Nodes are typed by the compiler, so evaluation is a walk that borrows strings from the bag
//! and from constants: no allocation unless an operator must build a new string (`+` on
//! strings, `toLower` of a string with capitals, a regex pattern that is not a literal).
//!
//! As in Istio, a missing attribute is an error except under `|`, where it means "try the
//! next operand"; a missing map key reads as `""` except under `|`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::net::IpAddr;
use std::sync::Arc;

use regex::Regex;

use crate::attribute::{AttrId, Bag, EMPTY_MAP, OwnedValue, Value, time};

/// Why an expression could not be evaluated for a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    /// An attribute the expression needs is absent.
    #[error("lookup failed: '{0}'")]
    Missing(Arc<str>),
    /// A bag held a value of another type than the vocabulary declares.
    #[error("attribute has the wrong type: {0}")]
    WrongType(&'static str),
    /// A conversion function got text it cannot convert.
    #[error("{func}: {message}")]
    Conversion {
        func: &'static str,
        message: &'static str,
    },
    /// `x.matches(y)` with a non-literal pattern that is not a valid regex.
    #[error("invalid regular expression")]
    BadRegex,
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
}

/// A conversion from STRING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conv {
    Ip,
    Timestamp,
    Email,
    Uri,
    DnsName,
}

/// A compiled glob (`match()`): Istio's globs have a single `*` at one end, or none.
#[derive(Debug, Clone)]
pub(crate) enum Glob {
    Prefix(Box<str>),
    Suffix(Box<str>),
    Exact(Box<str>),
}

/// A compiled, typed expression node.
#[derive(Debug)]
pub(crate) enum Node {
    Const(OwnedValue),
    Attr { id: AttrId, name: Arc<str> },
    Index(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    LOr(Box<Node>, Box<Node>),
    LAnd(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Eq(Box<Node>, Box<Node>),
    Ne(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Add(Box<Node>, Box<Node>),
    Cond(Box<Node>, Box<Node>, Box<Node>),
    Size(Box<Node>),
    GlobConst(Box<Node>, Glob),
    Glob(Box<Node>, Box<Node>),
    MatchesConst(Box<Regex>, Box<Node>),
    MatchesDyn(Box<Node>, Box<Node>),
    StartsWith(Box<Node>, Box<Node>),
    EndsWith(Box<Node>, Box<Node>),
    Convert(Conv, Box<Node>),
    EmptyMap,
    ToLower(Box<Node>),
}

type Result<T> = std::result::Result<T, EvalError>;

// === impl Glob ===

impl Glob {
    pub(crate) fn new(pattern: &str) -> Self {
        if let Some(p) = pattern.strip_suffix('*') {
            Glob::Prefix(p.into())
        } else if let Some(s) = pattern.strip_prefix('*') {
            Glob::Suffix(s.into())
        } else {
            Glob::Exact(pattern.into())
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Glob::Prefix(p) => s.starts_with(&**p),
            Glob::Suffix(p) => s.ends_with(&**p),
            Glob::Exact(p) => s == &**p,
        }
    }
}

// === impl Conv ===

impl Conv {
    pub(crate) fn apply<'a>(self, s: Cow<'a, str>) -> Result<Value<'a>> {
        let fail = |func, message| Err(EvalError::Conversion { func, message });
        match self {
            Conv::Ip => match s.parse::<IpAddr>() {
                Ok(ip) => Ok(Value::IpAddress(ip)),
                Err(_) => fail("ip", "not an IP address"),
            },
            Conv::Timestamp => match time::parse_timestamp(&s) {
                Some(t) => Ok(Value::Timestamp(t)),
                None => fail("timestamp", "not an RFC 3339 timestamp"),
            },
            Conv::Email => {
                let valid = match s.rsplit_once('@') {
                    Some((local, domain)) => {
                        !local.is_empty()
                            && !local.contains(['<', '>', ' ', '@'])
                            && valid_dns_name(domain)
                    }
                    None => false,
                };
                if valid {
                    Ok(Value::EmailAddress(s))
                } else {
                    fail("email", "not an e-mail address")
                }
            }
            Conv::Uri => {
                if s.is_empty() {
                    fail("uri", "empty string")
                } else if s.contains([' ', '\n', '\t']) {
                    fail("uri", "not a URI")
                } else {
                    Ok(Value::Uri(s))
                }
            }
            Conv::DnsName => {
                if valid_dns_name(&s) {
                    Ok(Value::DnsName(s))
                } else {
                    fail("dnsName", "not a DNS name")
                }
            }
        }
    }
}

fn valid_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

fn as_str<'v, 'a>(v: &'v Value<'a>) -> Result<&'v str> {
    v.as_str().ok_or(EvalError::WrongType("expected a string"))
}

fn into_cow(v: Value<'_>) -> Result<Cow<'_, str>> {
    match v {
        Value::String(s) | Value::EmailAddress(s) | Value::Uri(s) | Value::DnsName(s) => Ok(s),
        _ => Err(EvalError::WrongType("expected a string")),
    }
}

fn compare(a: &Value<'_>, b: &Value<'_>) -> Result<Ordering> {
    Ok(match (a, b) {
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Int64(x), Value::Int64(y)) => x.cmp(y),
        (Value::Double(x), Value::Double(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
        (Value::Duration(x), Value::Duration(y)) => x.cmp(y),
        _ => return Err(EvalError::WrongType("operands of a comparison")),
    })
}

// === impl Node ===

impl Node {
    /// The `ATTR == "literal"` terms of the top-level conjunction this node is (a lone term
    /// is a conjunction of one): when any of them is false, or its attribute absent, the
    /// whole expression cannot hold.
    pub(crate) fn required_equalities<'a>(&'a self, out: &mut Vec<(AttrId, &'a str)>) {
        match self {
            Node::LAnd(a, b) => {
                a.required_equalities(out);
                b.required_equalities(out);
            }
            Node::Eq(a, b) => match (a.as_ref(), b.as_ref()) {
                (Node::Attr { id, .. }, Node::Const(OwnedValue::String(v)))
                | (Node::Const(OwnedValue::String(v)), Node::Attr { id, .. }) => {
                    out.push((*id, v.as_str()));
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Evaluates to a value; a missing attribute is an error.
    pub(crate) fn eval<'a>(&'a self, bag: &'a dyn Bag) -> Result<Value<'a>> {
        match self {
            Node::Const(v) => Ok(v.as_value()),
            Node::Attr { id, name } => bag.get(*id).ok_or_else(|| EvalError::Missing(name.clone())),
            Node::Index(m, k) => {
                let Value::StringMap(map) = m.eval(bag)? else {
                    return Err(EvalError::WrongType("expected a string map"));
                };
                let key = k.eval(bag)?;
                Ok(Value::String(Cow::Borrowed(
                    map.get(as_str(&key)?).unwrap_or(""),
                )))
            }
            Node::Or(a, b) => match a.eval_opt(bag)? {
                Some(v) => Ok(v),
                None => b.eval(bag),
            },
            Node::LOr(a, b) => Ok(Value::Bool(a.eval_bool(bag)? || b.eval_bool(bag)?)),
            Node::LAnd(a, b) => Ok(Value::Bool(a.eval_bool(bag)? && b.eval_bool(bag)?)),
            Node::Not(a) => Ok(Value::Bool(!a.eval_bool(bag)?)),
            Node::Eq(a, b) => Ok(Value::Bool(a.eval(bag)?.equals(&b.eval(bag)?))),
            Node::Ne(a, b) => Ok(Value::Bool(!a.eval(bag)?.equals(&b.eval(bag)?))),
            Node::Cmp(op, a, b) => {
                let ord = compare(&a.eval(bag)?, &b.eval(bag)?)?;
                Ok(Value::Bool(match op {
                    CmpOp::Lt => ord == Ordering::Less,
                    CmpOp::Le => ord != Ordering::Greater,
                    CmpOp::Gt => ord == Ordering::Greater,
                    CmpOp::Ge => ord != Ordering::Less,
                }))
            }
            Node::Add(a, b) => match (a.eval(bag)?, b.eval(bag)?) {
                (Value::Int64(x), Value::Int64(y)) => Ok(Value::Int64(x.wrapping_add(y))),
                (Value::Double(x), Value::Double(y)) => Ok(Value::Double(x + y)),
                (Value::String(x), Value::String(y)) => Ok(Value::String(if y.is_empty() {
                    x
                } else if x.is_empty() {
                    y
                } else {
                    let mut s = String::with_capacity(x.len() + y.len());
                    s.push_str(&x);
                    s.push_str(&y);
                    Cow::Owned(s)
                })),
                _ => Err(EvalError::WrongType("operands of +")),
            },
            Node::Cond(c, t, f) => {
                if c.eval_bool(bag)? {
                    t.eval(bag)
                } else {
                    f.eval(bag)
                }
            }
            Node::Size(x) => Ok(Value::Int64(match x.eval(bag)? {
                Value::StringMap(m) => m.len() as i64,
                Value::Bytes(b) => b.len() as i64,
                v => as_str(&v)?.chars().count() as i64,
            })),
            Node::GlobConst(s, g) => Ok(Value::Bool(g.matches(as_str(&s.eval(bag)?)?))),
            Node::Glob(s, p) => {
                let p = p.eval(bag)?;
                Ok(Value::Bool(
                    Glob::new(as_str(&p)?).matches(as_str(&s.eval(bag)?)?),
                ))
            }
            Node::MatchesConst(re, s) => Ok(Value::Bool(re.is_match(as_str(&s.eval(bag)?)?))),
            Node::MatchesDyn(p, s) => {
                let p = p.eval(bag)?;
                let re = regex::RegexBuilder::new(as_str(&p)?)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|_| EvalError::BadRegex)?;
                Ok(Value::Bool(re.is_match(as_str(&s.eval(bag)?)?)))
            }
            Node::StartsWith(t, a) => Ok(Value::Bool(
                as_str(&t.eval(bag)?)?.starts_with(as_str(&a.eval(bag)?)?),
            )),
            Node::EndsWith(t, a) => Ok(Value::Bool(
                as_str(&t.eval(bag)?)?.ends_with(as_str(&a.eval(bag)?)?),
            )),
            Node::Convert(conv, x) => conv.apply(into_cow(x.eval(bag)?)?),
            Node::EmptyMap => Ok(Value::StringMap(&EMPTY_MAP)),
            Node::ToLower(x) => {
                let s = into_cow(x.eval(bag)?)?;
                if s.chars().any(char::is_uppercase) {
                    Ok(Value::String(Cow::Owned(s.to_lowercase())))
                } else {
                    Ok(Value::String(s))
                }
            }
        }
    }

    /// Evaluates under `|`: a missing attribute or map key is `None`.
    pub(crate) fn eval_opt<'a>(&'a self, bag: &'a dyn Bag) -> Result<Option<Value<'a>>> {
        match self {
            Node::Attr { id, .. } => Ok(bag.get(*id)),
            Node::Index(m, k) => {
                let Some(mv) = m.eval_opt(bag)? else {
                    return Ok(None);
                };
                let Value::StringMap(map) = mv else {
                    return Err(EvalError::WrongType("expected a string map"));
                };
                let Some(key) = k.eval_opt(bag)? else {
                    return Ok(None);
                };
                Ok(map
                    .get(as_str(&key)?)
                    .map(|v| Value::String(Cow::Borrowed(v))))
            }
            Node::Or(a, b) => match a.eval_opt(bag)? {
                Some(v) => Ok(Some(v)),
                None => b.eval_opt(bag),
            },
            other => other.eval(bag).map(Some),
        }
    }

    /// Evaluates a BOOL node.
    pub(crate) fn eval_bool(&self, bag: &dyn Bag) -> Result<bool> {
        match self.eval(bag)? {
            Value::Bool(b) => Ok(b),
            _ => Err(EvalError::WrongType("expected a bool")),
        }
    }
}
