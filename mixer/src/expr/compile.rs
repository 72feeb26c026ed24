//! Type checking against the attribute vocabulary, and compilation into typed [`Node`]s.
//!
//! The rules are Istio's (`mixer/pkg/lang/checker`): both sides of `==`, `!=`, `|`, `+` and
//! comparisons have the same type; `&&`, `||` and `!` take BOOL; `m[k]` takes a STRING_MAP and
//! a STRING; a string literal that parses as a Go duration (`"10ms"`) is a DURATION, or a
//! STRING where the other operand is one. Constant arguments of `ip()`, `timestamp()`,
//! `email()`, `uri()`, `dnsName()`, `match()` and `matches()` are checked and converted here,
//! once, so a bad literal is refused when config loads.

use std::borrow::Cow;
use std::sync::Arc;

use regex::Regex;

use super::eval::{CmpOp, Conv, Glob, Node};
use super::parse::{Ast, BinOp, Pos, UnOp};
use crate::attribute::{AttrId, OwnedValue, ValueType, time};

/// Resolves attribute names during type checking.
pub trait AttributeFinder {
    /// The id and type of attribute `name`, if known.
    fn find(&self, name: &str) -> Option<(AttrId, ValueType)>;
}

// === impl AttributeFinder for Vocabulary ===

impl AttributeFinder for crate::attribute::Vocabulary {
    fn find(&self, name: &str) -> Option<(AttrId, ValueType)> {
        self.lookup(name)
    }
}

/// A type error at a byte offset.
#[derive(Debug)]
pub(crate) struct TypeError {
    pub pos: Pos,
    pub message: String,
}

/// A compiled sub-expression with its type.
pub(crate) struct Typed {
    pub node: Node,
    pub ty: ValueType,
    /// A string literal that parsed as a duration; it may still be used as a STRING.
    duration_literal: Option<String>,
}

type Result<T> = std::result::Result<T, TypeError>;

fn err<T>(pos: Pos, message: impl Into<String>) -> Result<T> {
    Err(TypeError {
        pos,
        message: message.into(),
    })
}

/// Type-checks and compiles `ast`; `attrs` collects the attributes it reads.
pub(crate) fn compile(
    ast: &Ast,
    finder: &dyn AttributeFinder,
    attrs: &mut Vec<AttrId>,
) -> Result<Typed> {
    Compiler { finder, attrs }.compile(ast)
}

/// Makes a duration literal a STRING (when used where a STRING is expected).
pub(crate) fn as_string(t: Typed) -> Typed {
    match t.duration_literal {
        Some(s) => Typed {
            node: Node::Const(OwnedValue::String(s)),
            ty: ValueType::String,
            duration_literal: None,
        },
        None => t,
    }
}

struct Compiler<'a> {
    finder: &'a dyn AttributeFinder,
    attrs: &'a mut Vec<AttrId>,
}

fn typed(node: Node, ty: ValueType) -> Typed {
    Typed {
        node,
        ty,
        duration_literal: None,
    }
}

fn op_name(op: BinOp) -> &'static str {
    match op {
        BinOp::LOr => "||",
        BinOp::LAnd => "&&",
        BinOp::Eq => "==",
        BinOp::Ne => "!=",
        BinOp::Lt => "<",
        BinOp::Le => "<=",
        BinOp::Gt => ">",
        BinOp::Ge => ">=",
        BinOp::Add => "+",
        BinOp::Or => "|",
    }
}

/// Gives `a` and `b` one type, turning a duration literal into a STRING next to a STRING.
fn unify(a: Typed, b: Typed, what: &str, pos_b: Pos) -> Result<(Typed, Typed, ValueType)> {
    if a.ty == b.ty {
        let ty = a.ty;
        return Ok((a, b, ty));
    }
    if a.duration_literal.is_some() && b.ty == ValueType::String {
        return Ok((as_string(a), b, ValueType::String));
    }
    if b.duration_literal.is_some() && a.ty == ValueType::String {
        return Ok((a, as_string(b), ValueType::String));
    }
    err(
        pos_b,
        format!(
            "{what}: operands have different types: {} and {}",
            a.ty, b.ty
        ),
    )
}

fn expect(t: Typed, want: ValueType, pos: Pos, what: &str) -> Result<Typed> {
    let t = if want == ValueType::String {
        as_string(t)
    } else {
        t
    };
    if t.ty != want {
        return err(pos, format!("{what} must be {want}, not {}", t.ty));
    }
    Ok(t)
}

// === impl Compiler ===

impl Compiler<'_> {
    fn compile(&mut self, ast: &Ast) -> Result<Typed> {
        match ast {
            Ast::Str(s, _) => Ok(match time::parse_duration(s) {
                Some(d) => Typed {
                    node: Node::Const(OwnedValue::Duration(d)),
                    ty: ValueType::Duration,
                    duration_literal: Some(s.clone()),
                },
                None => typed(
                    Node::Const(OwnedValue::String(s.clone())),
                    ValueType::String,
                ),
            }),
            Ast::Int(v, _) => Ok(typed(Node::Const(OwnedValue::Int64(*v)), ValueType::Int64)),
            Ast::Double(v, _) => Ok(typed(
                Node::Const(OwnedValue::Double(*v)),
                ValueType::Double,
            )),
            Ast::Bool(v, _) => Ok(typed(Node::Const(OwnedValue::Bool(*v)), ValueType::Bool)),
            Ast::Var(name, pos) => match self.finder.find(name) {
                Some((id, ty)) => {
                    if !self.attrs.contains(&id) {
                        self.attrs.push(id);
                    }
                    Ok(typed(
                        Node::Attr {
                            id,
                            name: Arc::from(name.as_str()),
                        },
                        ty,
                    ))
                }
                None => err(*pos, format!("unknown attribute {name}")),
            },
            Ast::Unary(UnOp::Not, x, pos) => {
                let x = self.compile(x)?;
                let x = expect(x, ValueType::Bool, *pos, "operand of !")?;
                Ok(typed(Node::Not(Box::new(x.node)), ValueType::Bool))
            }
            Ast::Unary(UnOp::Neg, _, pos) => {
                err(*pos, "unary minus applies to number literals only")
            }
            Ast::Index(m, k, pos) => {
                let m = self.compile(m)?;
                if m.ty != ValueType::StringMap {
                    return err(
                        *pos,
                        format!("cannot index a {}: only STRING_MAP values have keys", m.ty),
                    );
                }
                let kpos = k.pos();
                let k = self.compile(k)?;
                let k = expect(k, ValueType::String, kpos, "map key")?;
                Ok(typed(
                    Node::Index(Box::new(m.node), Box::new(k.node)),
                    ValueType::String,
                ))
            }
            Ast::Binary(op, l, r, pos) => self.binary(*op, l, r, *pos),
            Ast::Call {
                name,
                target,
                args,
                pos,
            } => self.call(name, target.as_deref(), args, *pos),
        }
    }

    fn binary(&mut self, op: BinOp, l: &Ast, r: &Ast, pos: Pos) -> Result<Typed> {
        let name = op_name(op);
        let lt = self.compile(l)?;
        let rt = self.compile(r)?;
        if matches!(op, BinOp::LOr | BinOp::LAnd) {
            for (t, p) in [(&lt, l.pos()), (&rt, r.pos())] {
                if t.ty != ValueType::Bool {
                    return err(p, format!("operands of {name} must be BOOL, not {}", t.ty));
                }
            }
        }
        let (lt, rt, ty) = unify(lt, rt, name, r.pos())?;
        let (a, b) = (Box::new(lt.node), Box::new(rt.node));
        Ok(match op {
            BinOp::LOr | BinOp::LAnd => {
                if ty != ValueType::Bool {
                    return err(pos, format!("operands of {name} must be BOOL, not {ty}"));
                }
                let node = if op == BinOp::LOr {
                    Node::LOr(a, b)
                } else {
                    Node::LAnd(a, b)
                };
                typed(node, ValueType::Bool)
            }
            BinOp::Eq | BinOp::Ne => {
                if ty == ValueType::StringMap {
                    return err(pos, format!("{name} cannot compare STRING_MAP values"));
                }
                let node = if op == BinOp::Eq {
                    Node::Eq(a, b)
                } else {
                    Node::Ne(a, b)
                };
                typed(node, ValueType::Bool)
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                if !matches!(
                    ty,
                    ValueType::String
                        | ValueType::Int64
                        | ValueType::Double
                        | ValueType::Timestamp
                        | ValueType::Duration
                ) {
                    return err(pos, format!("{name} cannot compare {ty} values"));
                }
                let cmp = match op {
                    BinOp::Lt => CmpOp::Lt,
                    BinOp::Le => CmpOp::Le,
                    BinOp::Gt => CmpOp::Gt,
                    _ => CmpOp::Ge,
                };
                typed(Node::Cmp(cmp, a, b), ValueType::Bool)
            }
            BinOp::Add => {
                if !matches!(ty, ValueType::String | ValueType::Int64 | ValueType::Double) {
                    return err(pos, format!("+ cannot add {ty} values"));
                }
                typed(Node::Add(a, b), ty)
            }
            BinOp::Or => Typed {
                node: Node::Or(a, b),
                ty,
                duration_literal: None,
            },
        })
    }

    fn args(
        &mut self,
        name: &str,
        args: &[Ast],
        want: &[ValueType],
        pos: Pos,
    ) -> Result<Vec<Typed>> {
        if args.len() != want.len() {
            return err(
                pos,
                format!(
                    "{name} takes {} argument{}, got {}",
                    want.len(),
                    if want.len() == 1 { "" } else { "s" },
                    args.len()
                ),
            );
        }
        let mut out = Vec::with_capacity(args.len());
        for (i, (a, w)) in args.iter().zip(want).enumerate() {
            let t = self.compile(a)?;
            out.push(expect(
                t,
                *w,
                a.pos(),
                &format!("argument {} of {name}", i + 1),
            )?);
        }
        Ok(out)
    }

    fn call(&mut self, name: &str, target: Option<&Ast>, args: &[Ast], pos: Pos) -> Result<Typed> {
        use ValueType as T;
        let method = matches!(name, "matches" | "startsWith" | "endsWith");
        let known = method
            || matches!(
                name,
                "match"
                    | "ip"
                    | "timestamp"
                    | "email"
                    | "uri"
                    | "dnsName"
                    | "conditional"
                    | "conditionalString"
                    | "emptyStringMap"
                    | "toLower"
                    | "size"
            );
        if !known {
            return err(pos, format!("unknown function {name}"));
        }
        if method && target.is_none() {
            return err(pos, format!("{name} is a method: write x.{name}(y)"));
        }
        if !method && target.is_some() {
            return err(
                pos,
                format!("{name} is a function, not a method: write {name}(...)"),
            );
        }
        if let Some(target) = target {
            let tpos = target.pos();
            let t = self.compile(target)?;
            let t = expect(t, T::String, tpos, &format!("target of {name}"))?;
            let mut a = self.args(name, args, &[T::String], pos)?;
            let arg = Box::new(a.remove(0).node);
            return Ok(typed(
                match name {
                    "startsWith" => Node::StartsWith(Box::new(t.node), arg),
                    "endsWith" => Node::EndsWith(Box::new(t.node), arg),
                    _ => match t.node {
                        Node::Const(OwnedValue::String(pattern)) => match Regex::new(&pattern) {
                            Ok(re) => Node::MatchesConst(Box::new(re), arg),
                            Err(e) => {
                                return err(tpos, format!("invalid regular expression: {e}"));
                            }
                        },
                        node => Node::MatchesDyn(Box::new(node), arg),
                    },
                },
                T::Bool,
            ));
        }
        match name {
            "match" => {
                let mut a = self.args(name, args, &[T::String, T::String], pos)?;
                let pattern = a.remove(1).node;
                let s = Box::new(a.remove(0).node);
                Ok(typed(
                    match pattern {
                        Node::Const(OwnedValue::String(p)) => Node::GlobConst(s, Glob::new(&p)),
                        p => Node::Glob(s, Box::new(p)),
                    },
                    T::Bool,
                ))
            }
            "ip" | "timestamp" | "email" | "uri" | "dnsName" => {
                let (conv, ty) = match name {
                    "ip" => (Conv::Ip, T::IpAddress),
                    "timestamp" => (Conv::Timestamp, T::Timestamp),
                    "email" => (Conv::Email, T::EmailAddress),
                    "uri" => (Conv::Uri, T::Uri),
                    _ => (Conv::DnsName, T::DnsName),
                };
                let mut a = self.args(name, args, &[T::String], pos)?;
                let node = a.remove(0).node;
                if let Node::Const(OwnedValue::String(s)) = &node {
                    return match conv.apply(Cow::Borrowed(s.as_str())) {
                        Ok(v) => Ok(typed(Node::Const(v.to_owned_value()), ty)),
                        Err(super::EvalError::Conversion { message, .. }) => {
                            err(args[0].pos(), format!("{name}({s:?}): {message}"))
                        }
                        Err(e) => err(args[0].pos(), format!("{name}({s:?}): {e}")),
                    };
                }
                Ok(typed(Node::Convert(conv, Box::new(node)), ty))
            }
            "conditional" => {
                if args.len() != 3 {
                    return err(
                        pos,
                        format!("conditional takes 3 arguments, got {}", args.len()),
                    );
                }
                let c = self.compile(&args[0])?;
                let c = expect(c, T::Bool, args[0].pos(), "argument 1 of conditional")?;
                let t = self.compile(&args[1])?;
                let f = self.compile(&args[2])?;
                let (t, f, ty) = unify(t, f, "conditional", args[2].pos())?;
                Ok(typed(
                    Node::Cond(Box::new(c.node), Box::new(t.node), Box::new(f.node)),
                    ty,
                ))
            }
            "conditionalString" => {
                let mut a = self.args(name, args, &[T::Bool, T::String, T::String], pos)?;
                let f = a.remove(2).node;
                let t = a.remove(1).node;
                let c = a.remove(0).node;
                Ok(typed(
                    Node::Cond(Box::new(c), Box::new(t), Box::new(f)),
                    T::String,
                ))
            }
            "emptyStringMap" => {
                self.args(name, args, &[], pos)?;
                Ok(typed(Node::EmptyMap, T::StringMap))
            }
            "toLower" => {
                let mut a = self.args(name, args, &[T::String], pos)?;
                Ok(typed(Node::ToLower(Box::new(a.remove(0).node)), T::String))
            }
            _ => {
                // size
                if args.len() != 1 {
                    return err(pos, format!("size takes 1 argument, got {}", args.len()));
                }
                let a = as_string(self.compile(&args[0])?);
                if !matches!(a.ty, T::String | T::StringMap | T::Bytes) {
                    return err(
                        args[0].pos(),
                        format!(
                            "argument 1 of size must be STRING, STRING_MAP or BYTES, not {}",
                            a.ty
                        ),
                    );
                }
                Ok(typed(Node::Size(Box::new(a.node)), T::Int64))
            }
        }
    }
}
