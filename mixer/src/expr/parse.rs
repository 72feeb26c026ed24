//! The lexer and parser of CEXL, Istio's attribute expression language.
//!
//! The grammar is the subset of Go expressions Istio accepted, with Go's operator precedence
//! (`||` < `&&` < comparisons < `+ |` ), dotted attribute names (`request.headers`), map
//! indexing, function calls (`ip("10.0.0.1")`) and method calls (`x.startsWith("a")`).
//! Every node carries the byte offset it starts at, for error messages.

/// A byte offset into the expression text.
pub(crate) type Pos = usize;

/// A binary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    LOr,
    LAnd,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    /// `|`: the first operand that is present.
    Or,
}

/// A unary operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnOp {
    Not,
    Neg,
}

/// The parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Ast {
    Str(String, Pos),
    Int(i64, Pos),
    Double(f64, Pos),
    Bool(bool, Pos),
    Var(String, Pos),
    Unary(UnOp, Box<Ast>, Pos),
    Binary(BinOp, Box<Ast>, Box<Ast>, Pos),
    Index(Box<Ast>, Box<Ast>, Pos),
    Call {
        name: String,
        target: Option<Box<Ast>>,
        args: Vec<Ast>,
        pos: Pos,
    },
}

/// A syntax error at a byte offset.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Int(i64),
    Double(f64),
    Op(&'static str),
    Eof,
}

struct Lexer<'a> {
    src: &'a str,
    pos: usize,
}

// === impl Ast ===

impl Ast {
    /// Where the node starts.
    pub(crate) fn pos(&self) -> Pos {
        match self {
            Ast::Str(_, p)
            | Ast::Int(_, p)
            | Ast::Double(_, p)
            | Ast::Bool(_, p)
            | Ast::Var(_, p)
            | Ast::Unary(_, _, p) => *p,
            Ast::Binary(_, l, _, _) => l.pos(),
            Ast::Index(x, _, _) => x.pos(),
            Ast::Call { target, pos, .. } => target.as_ref().map(|t| t.pos()).unwrap_or(*pos),
        }
    }
}

// === impl Lexer ===

impl<'a> Lexer<'a> {
    fn err<T>(&self, pos: usize, message: impl Into<String>) -> Result<T, SyntaxError> {
        Err(SyntaxError {
            pos,
            message: message.into(),
        })
    }

    /// The next token and the offset it starts at.
    fn next(&mut self) -> Result<(Tok, Pos), SyntaxError> {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() && bytes[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let start = self.pos;
        let Some(&c) = bytes.get(start) else {
            return Ok((Tok::Eof, start));
        };
        if c.is_ascii_alphabetic() || c == b'_' || c == b'$' {
            while self.pos < bytes.len()
                && (bytes[self.pos].is_ascii_alphanumeric()
                    || bytes[self.pos] == b'_'
                    || bytes[self.pos] == b'$')
            {
                self.pos += 1;
            }
            return Ok((Tok::Ident(self.src[start..self.pos].to_string()), start));
        }
        if c.is_ascii_digit() || (c == b'.' && bytes.get(start + 1).is_some_and(u8::is_ascii_digit))
        {
            return self.number(start);
        }
        if c == b'"' || c == b'\'' {
            return self.quoted(start, c);
        }
        if c == b'`' {
            let Some(end) = self.src[start + 1..].find('`') else {
                return self.err(start, "unterminated raw string");
            };
            self.pos = start + 1 + end + 1;
            return Ok((
                Tok::Str(self.src[start + 1..start + 1 + end].to_string()),
                start,
            ));
        }
        const OPS: [&str; 22] = [
            "==", "!=", "&&", "||", "<=", ">=", "<", ">", "!", "|", "+", "-", "(", ")", "[", "]",
            ",", ".", "*", "/", "%", "&",
        ];
        for op in OPS {
            if self.src[start..].starts_with(op) {
                self.pos += op.len();
                if matches!(op, "*" | "/" | "%" | "&") {
                    return self.err(start, format!("unsupported operator {op}"));
                }
                return Ok((Tok::Op(op), start));
            }
        }
        let ch = self.src[start..].chars().next().unwrap_or('?');
        self.err(start, format!("unexpected character {ch:?}"))
    }

    fn number(&mut self, start: usize) -> Result<(Tok, Pos), SyntaxError> {
        let bytes = self.src.as_bytes();
        let mut is_float = false;
        while self.pos < bytes.len() {
            let b = bytes[self.pos];
            if b.is_ascii_digit() {
                self.pos += 1;
            } else if b == b'.' && !is_float {
                // `1.foo` is not a number followed by a selector; Go has no such thing either.
                is_float = true;
                self.pos += 1;
            } else if (b == b'e' || b == b'E')
                && bytes
                    .get(self.pos + 1)
                    .is_some_and(|n| n.is_ascii_digit() || *n == b'-' || *n == b'+')
            {
                is_float = true;
                self.pos += 2;
            } else {
                break;
            }
        }
        let text = &self.src[start..self.pos];
        if is_float {
            match text.parse::<f64>() {
                Ok(v) => Ok((Tok::Double(v), start)),
                Err(_) => self.err(start, format!("invalid number {text}")),
            }
        } else {
            match text.parse::<i64>() {
                Ok(v) => Ok((Tok::Int(v), start)),
                Err(_) => self.err(start, format!("integer {text} out of range")),
            }
        }
    }

    fn quoted(&mut self, start: usize, quote: u8) -> Result<(Tok, Pos), SyntaxError> {
        let mut out = String::new();
        let mut chars = self.src[start + 1..].char_indices();
        loop {
            let Some((i, c)) = chars.next() else {
                return self.err(start, "unterminated string literal");
            };
            match c {
                c if c as u32 == u32::from(quote) => {
                    self.pos = start + 1 + i + 1;
                    break;
                }
                '\\' => {
                    let Some((j, e)) = chars.next() else {
                        return self.err(start, "unterminated string literal");
                    };
                    let esc_pos = start + 1 + j;
                    match e {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        '\\' => out.push('\\'),
                        '"' => out.push('"'),
                        '\'' => out.push('\''),
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'v' => out.push('\u{b}'),
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let hex: String =
                                (0..n).filter_map(|_| chars.next().map(|x| x.1)).collect();
                            match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                                Some(ch) if hex.len() == n => out.push(ch),
                                _ => return self.err(esc_pos, "invalid escape in string literal"),
                            }
                        }
                        _ => {
                            return self
                                .err(esc_pos, format!("unknown escape \\{e} in string literal"));
                        }
                    }
                }
                '\n' => return self.err(start, "newline in string literal"),
                c => out.push(c),
            }
        }
        Ok((Tok::Str(out), start))
    }
}

/// Parses an expression.
pub(crate) fn parse(src: &str) -> Result<Ast, SyntaxError> {
    let mut p = Parser {
        lexer: Lexer { src, pos: 0 },
        tok: Tok::Eof,
        pos: 0,
        depth: 0,
    };
    p.bump()?;
    if p.tok == Tok::Eof {
        return Err(SyntaxError {
            pos: 0,
            message: "empty expression".into(),
        });
    }
    let ast = p.expr(0)?;
    if p.tok != Tok::Eof {
        return Err(SyntaxError {
            pos: p.pos,
            message: format!("unexpected {}", describe(&p.tok)),
        });
    }
    Ok(ast)
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::Ident(s) => format!("identifier {s}"),
        Tok::Str(s) => format!("string {s:?}"),
        Tok::Int(v) => format!("number {v}"),
        Tok::Double(v) => format!("number {v}"),
        Tok::Op(o) => format!("'{o}'"),
        Tok::Eof => "end of expression".into(),
    }
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    tok: Tok,
    pos: Pos,
    depth: usize,
}

/// Deeper nesting than this is refused rather than risking the stack.
const MAX_DEPTH: usize = 200;

// === impl Parser ===

impl Parser<'_> {
    fn bump(&mut self) -> Result<(), SyntaxError> {
        let (tok, pos) = self.lexer.next()?;
        self.tok = tok;
        self.pos = pos;
        Ok(())
    }

    fn expect(&mut self, op: &'static str) -> Result<(), SyntaxError> {
        if self.tok == Tok::Op(op) {
            self.bump()
        } else {
            Err(SyntaxError {
                pos: self.pos,
                message: format!("expected '{op}', found {}", describe(&self.tok)),
            })
        }
    }

    fn binop(&self) -> Option<(BinOp, u8)> {
        let Tok::Op(op) = self.tok else { return None };
        Some(match op {
            "||" => (BinOp::LOr, 1),
            "&&" => (BinOp::LAnd, 2),
            "==" => (BinOp::Eq, 3),
            "!=" => (BinOp::Ne, 3),
            "<" => (BinOp::Lt, 3),
            "<=" => (BinOp::Le, 3),
            ">" => (BinOp::Gt, 3),
            ">=" => (BinOp::Ge, 3),
            "+" => (BinOp::Add, 4),
            "|" => (BinOp::Or, 4),
            _ => return None,
        })
    }

    fn expr(&mut self, min_prec: u8) -> Result<Ast, SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(SyntaxError {
                pos: self.pos,
                message: "expression nested too deeply".into(),
            });
        }
        let mut left = self.unary()?;
        while let Some((op, prec)) = self.binop() {
            if prec <= min_prec {
                break;
            }
            let pos = self.pos;
            self.bump()?;
            let right = self.expr(prec)?;
            left = Ast::Binary(op, Box::new(left), Box::new(right), pos);
        }
        self.depth -= 1;
        Ok(left)
    }

    fn unary(&mut self) -> Result<Ast, SyntaxError> {
        let pos = self.pos;
        match self.tok {
            Tok::Op("!") => {
                self.bump()?;
                Ok(Ast::Unary(UnOp::Not, Box::new(self.unary()?), pos))
            }
            Tok::Op("-") => {
                self.bump()?;
                match self.unary()? {
                    Ast::Int(v, _) => Ok(Ast::Int(-v, pos)),
                    Ast::Double(v, _) => Ok(Ast::Double(-v, pos)),
                    other => Ok(Ast::Unary(UnOp::Neg, Box::new(other), pos)),
                }
            }
            _ => self.postfix(),
        }
    }

    fn args(&mut self) -> Result<Vec<Ast>, SyntaxError> {
        // At '('.
        self.bump()?;
        let mut args = Vec::new();
        if self.tok == Tok::Op(")") {
            self.bump()?;
            return Ok(args);
        }
        loop {
            args.push(self.expr(0)?);
            match self.tok {
                Tok::Op(",") => self.bump()?,
                Tok::Op(")") => {
                    self.bump()?;
                    return Ok(args);
                }
                _ => {
                    return Err(SyntaxError {
                        pos: self.pos,
                        message: format!("expected ',' or ')', found {}", describe(&self.tok)),
                    });
                }
            }
        }
    }

    fn postfix(&mut self) -> Result<Ast, SyntaxError> {
        let pos = self.pos;
        let mut x = match std::mem::replace(&mut self.tok, Tok::Eof) {
            Tok::Str(s) => {
                self.bump()?;
                Ast::Str(s, pos)
            }
            Tok::Int(v) => {
                self.bump()?;
                Ast::Int(v, pos)
            }
            Tok::Double(v) => {
                self.bump()?;
                Ast::Double(v, pos)
            }
            Tok::Op("(") => {
                self.bump()?;
                let inner = self.expr(0)?;
                self.expect(")")?;
                inner
            }
            Tok::Ident(name) => {
                self.bump()?;
                if self.tok == Tok::Op("(") {
                    let args = self.args()?;
                    Ast::Call {
                        name,
                        target: None,
                        args,
                        pos,
                    }
                } else if name.eq_ignore_ascii_case("true") {
                    Ast::Bool(true, pos)
                } else if name.eq_ignore_ascii_case("false") {
                    Ast::Bool(false, pos)
                } else {
                    Ast::Var(name, pos)
                }
            }
            other => {
                self.tok = other;
                return Err(SyntaxError {
                    pos,
                    message: format!("unexpected {}", describe(&self.tok)),
                });
            }
        };
        loop {
            match self.tok {
                Tok::Op("[") => {
                    let ipos = self.pos;
                    self.bump()?;
                    let key = self.expr(0)?;
                    self.expect("]")?;
                    x = Ast::Index(Box::new(x), Box::new(key), ipos);
                }
                Tok::Op(".") => {
                    self.bump()?;
                    let npos = self.pos;
                    let Tok::Ident(sel) = std::mem::replace(&mut self.tok, Tok::Eof) else {
                        return Err(SyntaxError {
                            pos: npos,
                            message: "expected a name after '.'".into(),
                        });
                    };
                    self.bump()?;
                    if self.tok == Tok::Op("(") {
                        let args = self.args()?;
                        x = Ast::Call {
                            name: sel,
                            target: Some(Box::new(x)),
                            args,
                            pos: npos,
                        };
                    } else {
                        match x {
                            Ast::Var(ref mut name, _) => {
                                name.push('.');
                                name.push_str(&sel);
                            }
                            _ => {
                                return Err(SyntaxError {
                                    pos: npos,
                                    message: format!(
                                        "unexpected selector .{sel}: only attribute names and method calls may contain '.'"
                                    ),
                                });
                            }
                        }
                    }
                }
                _ => return Ok(x),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Ast {
        parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn precedence_follows_go() {
        // `|` binds tighter than `==`, which binds tighter than `&&`, then `||`.
        match p(r#"a | "x" == "y" && b || c"#) {
            Ast::Binary(BinOp::LOr, l, _, _) => match *l {
                Ast::Binary(BinOp::LAnd, l, _, _) => match *l {
                    Ast::Binary(BinOp::Eq, l, _, _) => {
                        assert!(matches!(*l, Ast::Binary(BinOp::Or, _, _, _)))
                    }
                    other => panic!("{other:?}"),
                },
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn selectors_index_and_methods() {
        assert_eq!(
            p("destination.service.host"),
            Ast::Var("destination.service.host".into(), 0)
        );
        match p(r#"request.headers["x-user"].startsWith("j")"#) {
            Ast::Call {
                name,
                target: Some(t),
                args,
                ..
            } => {
                assert_eq!(name, "startsWith");
                assert!(matches!(*t, Ast::Index(..)));
                assert_eq!(args.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        match p(r#"a.b.endsWith("x")"#) {
            Ast::Call {
                name,
                target: Some(t),
                ..
            } => {
                assert_eq!(name, "endsWith");
                assert_eq!(*t, Ast::Var("a.b".into(), 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p("$out.source_pod_ip"), Ast::Var(n, 0) if n == "$out.source_pod_ip"));
        assert!(matches!(p("TRUE"), Ast::Bool(true, 0)));
        assert!(matches!(p("-3"), Ast::Int(-3, 0)));
        assert!(matches!(p("1.5"), Ast::Double(v, 0) if v == 1.5));
        assert!(matches!(p(r#""a\"b""#), Ast::Str(s, 0) if s == "a\"b"));
        assert!(matches!(p("'c'"), Ast::Str(s, 0) if s == "c"));
        assert!(matches!(p("`raw\\n`"), Ast::Str(s, 0) if s == "raw\\n"));
    }

    #[test]
    fn syntax_errors_point_at_the_problem() {
        let cases = [
            ("a ==", 4, "unexpected end of expression"),
            ("a == \"x", 5, "unterminated string literal"),
            ("(a", 2, "expected ')'"),
            ("a * b", 2, "unsupported operator *"),
            ("a b", 2, "unexpected identifier b"),
            ("f(a b)", 4, "expected ',' or ')'"),
            ("", 0, "empty expression"),
            ("a # b", 2, "unexpected character"),
            ("f(x).b", 5, "unexpected selector .b"),
            ("99999999999999999999", 0, "out of range"),
        ];
        for (src, pos, msg) in cases {
            let e = parse(src).unwrap_err();
            assert_eq!(e.pos, pos, "{src}: {e:?}");
            assert!(e.message.contains(msg), "{src}: {e:?}");
        }
    }
}
