//! The text format's parser.
//!
//! Reads what [`crate::print`] writes, and a little more for hand-written
//! files: any name for a value (`%v1`, `%h4`), type annotations optional
//! except on constants, `//` comments, and statements in any order (they are
//! sorted topologically, so a cycle is reported rather than assumed away).
//! Every error carries a line and column; syntax errors stop at the first,
//! semantic errors (undefined names, shape errors, declared types that
//! disagree with inference) are all collected.

use crate::error::{IrError, ParseError};
use crate::graph::{Graph, NodeId};
use crate::infer::infer;
use crate::op::{Attr, Op};
use crate::tensor::Tensor;
use crate::types::{DType, TensorType};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Value(String),
    Global(String),
    Ident(String),
    Number(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Comma,
    Colon,
    Equals,
    Arrow,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Value(s) => format!("`%{s}`"),
            Tok::Global(s) => format!("`@{s}`"),
            Tok::Ident(s) | Tok::Number(s) => format!("`{s}`"),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Equals => "`=`".into(),
            Tok::Arrow => "`->`".into(),
            Tok::Eof => "the end of the input".into(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pos {
    line: usize,
    col: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '.'
}

fn lex(text: &str) -> Result<Vec<(Tok, Pos)>, IrError> {
    let chars: Vec<char> = text.chars().collect();
    let mut toks = Vec::new();
    let (mut i, mut line, mut col) = (0, 1, 1);
    let take_while = |i: &mut usize, col: &mut usize, pred: &dyn Fn(char) -> bool| {
        let start = *i;
        while *i < chars.len() && pred(chars[*i]) {
            *i += 1;
            *col += 1;
        }
        chars[start..*i].iter().collect::<String>()
    };
    while i < chars.len() {
        let c = chars[i];
        let pos = Pos { line, col };
        if c == '\n' {
            i += 1;
            line += 1;
            col = 1;
            continue;
        }
        if c.is_whitespace() {
            i += 1;
            col += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        let single = match c {
            '(' => Some(Tok::LParen),
            ')' => Some(Tok::RParen),
            '[' => Some(Tok::LBracket),
            ']' => Some(Tok::RBracket),
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ',' => Some(Tok::Comma),
            ':' => Some(Tok::Colon),
            '=' => Some(Tok::Equals),
            _ => None,
        };
        if let Some(t) = single {
            toks.push((t, pos));
            i += 1;
            col += 1;
            continue;
        }
        if c == '-' && chars.get(i + 1) == Some(&'>') {
            toks.push((Tok::Arrow, pos));
            i += 2;
            col += 2;
            continue;
        }
        if c == '%' || c == '@' {
            i += 1;
            col += 1;
            let name = take_while(&mut i, &mut col, &is_ident_char);
            if name.is_empty() {
                return Err(IrError::parse(
                    pos.line,
                    pos.col,
                    format!("expected a name after `{c}`"),
                ));
            }
            toks.push((if c == '%' { Tok::Value(name) } else { Tok::Global(name) }, pos));
            continue;
        }
        let starts_number = c.is_ascii_digit()
            || ((c == '-' || c == '+' || c == '.')
                && chars
                    .get(i + 1)
                    .is_some_and(|d| d.is_ascii_digit() || *d == '.' || *d == 'i' || *d == 'n'));
        if starts_number {
            let mut s = String::new();
            if c == '-' || c == '+' {
                s.push(c);
                i += 1;
                col += 1;
            }
            // Digits, a fraction, an exponent with its sign, or inf/nan.
            let mut prev = ' ';
            while i < chars.len() {
                let d = chars[i];
                let ok =
                    d.is_ascii_alphanumeric() || d == '.' || ((d == '-' || d == '+') && (prev == 'e' || prev == 'E'));
                if !ok {
                    break;
                }
                s.push(d);
                prev = d;
                i += 1;
                col += 1;
            }
            toks.push((Tok::Number(s), pos));
            continue;
        }
        if is_ident_start(c) {
            let name = take_while(&mut i, &mut col, &is_ident_char);
            toks.push((Tok::Ident(name), pos));
            continue;
        }
        return Err(IrError::parse(pos.line, pos.col, format!("unexpected character `{c}`")));
    }
    toks.push((Tok::Eof, Pos { line, col }));
    Ok(toks)
}

/// A nested-list literal: its shape and its scalars (with positions).
struct Literal {
    shape: Vec<usize>,
    items: Vec<(String, Pos)>,
    pos: Pos,
}

impl Literal {
    fn to_tensor(&self, dtype: DType) -> Result<Tensor, IrError> {
        let mut t = Tensor::try_zeros(TensorType::new(dtype, self.shape.clone()))?;
        let bad = |s: &str, p: Pos| IrError::parse(p.line, p.col, format!("`{s}` is not a valid {dtype} value"));
        match dtype {
            DType::F32 => {
                let out = t.data_mut::<f32>();
                for (o, (s, p)) in out.iter_mut().zip(&self.items) {
                    *o = s.parse::<f32>().map_err(|_| bad(s, *p))?;
                }
            }
            DType::F64 => {
                let out = t.data_mut::<f64>();
                for (o, (s, p)) in out.iter_mut().zip(&self.items) {
                    *o = s.parse::<f64>().map_err(|_| bad(s, *p))?;
                }
            }
            DType::Bool => {
                let out = t.data_mut::<u8>();
                for (o, (s, p)) in out.iter_mut().zip(&self.items) {
                    *o = match s.as_str() {
                        "true" | "1" => 1,
                        "false" | "0" => 0,
                        _ => return Err(bad(s, *p)),
                    };
                }
            }
        }
        Ok(t)
    }
}

struct Stmt {
    name: String,
    pos: Pos,
    declared: Option<(TensorType, Pos)>,
    /// The fused kernel block the statement sits in.
    kernel: Option<u32>,
    /// The arena offset written after the type (`@4096`).
    arena: Option<usize>,
    /// A checkpointing mark (`save` or `recompute`).
    mark: Option<crate::graph::Mark>,
    op_name: String,
    op_pos: Pos,
    attrs: Vec<(String, Attr)>,
    literal: Option<Literal>,
    operands: Vec<(String, Pos)>,
    /// A tuple type (`(f32[], f32[4])`), declared for an op of several
    /// results (`scan`).
    declared_tuple: Option<(Vec<TensorType>, Pos)>,
    /// The body of a region op (`scan … { graph … }`), parsed.
    body: Option<Graph>,
    /// The loop whose states a scan recomputes (`… from scan[…] { … }`):
    /// its attributes and body.
    from: Option<(Vec<(String, Attr)>, Graph)>,
}

/// How deeply regions may nest in a file (each level is a recursion of
/// the parser; the limit keeps a hostile file from overflowing the stack).
const MAX_NESTING: usize = crate::scan::MAX_NESTING;

struct Parser {
    toks: Vec<(Tok, Pos)>,
    at: usize,
    /// How many region bodies enclose the graph being parsed.
    depth: usize,
}

type PResult<T> = Result<T, IrError>;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn pos(&self) -> Pos {
        self.toks[self.at].1
    }

    fn bump(&mut self) -> (Tok, Pos) {
        let t = self.toks[self.at].clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn error<T>(&self, message: impl Into<String>) -> PResult<T> {
        let p = self.pos();
        Err(IrError::parse(p.line, p.col, message))
    }

    fn expect(&mut self, tok: Tok) -> PResult<Pos> {
        if *self.peek() == tok {
            Ok(self.bump().1)
        } else {
            self.error(format!("expected {}, found {}", tok.describe(), self.peek().describe()))
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == tok {
            self.bump();
            true
        } else {
            false
        }
    }

    fn ident(&mut self, what: &str) -> PResult<(String, Pos)> {
        match self.peek().clone() {
            Tok::Ident(s) => Ok((s, self.bump().1)),
            t => self.error(format!("expected {what}, found {}", t.describe())),
        }
    }

    fn value(&mut self, what: &str) -> PResult<(String, Pos)> {
        match self.peek().clone() {
            Tok::Value(s) => Ok((s, self.bump().1)),
            t => self.error(format!("expected {what} (like `%x`), found {}", t.describe())),
        }
    }

    fn usize(&mut self) -> PResult<usize> {
        match self.peek().clone() {
            Tok::Number(s) => match s.parse::<usize>() {
                Ok(v) => {
                    self.bump();
                    Ok(v)
                }
                Err(_) => self.error(format!("expected a non-negative integer, found `{s}`")),
            },
            t => self.error(format!("expected a non-negative integer, found {}", t.describe())),
        }
    }

    fn ty(&mut self) -> PResult<TensorType> {
        let start = self.pos();
        let ty = self.ty_unchecked()?;
        if crate::types::checked_elements(&ty.shape).is_none() {
            return Err(IrError::parse(
                start.line,
                start.col,
                format!("{ty} has more elements than a tensor may hold"),
            ));
        }
        Ok(ty)
    }

    fn ty_unchecked(&mut self) -> PResult<TensorType> {
        let (name, pos) = self.ident("a type like `f32[3,4]`")?;
        let dtype = DType::from_name(&name).ok_or_else(|| {
            IrError::parse(
                pos.line,
                pos.col,
                format!("unknown element type `{name}` (expected f32, f64 or bool)"),
            )
        })?;
        self.expect(Tok::LBracket)?;
        let mut shape = Vec::new();
        if !self.eat(&Tok::RBracket) {
            loop {
                shape.push(self.usize()?);
                if self.eat(&Tok::RBracket) {
                    break;
                }
                self.expect(Tok::Comma)?;
            }
        }
        Ok(TensorType::new(dtype, shape))
    }

    /// A number or a nested list, read without recursion.
    fn literal(&mut self) -> PResult<Literal> {
        let pos = self.pos();
        let scalar = |tok: &Tok| match tok {
            Tok::Number(s) => Some(s.clone()),
            Tok::Ident(s) if matches!(s.as_str(), "inf" | "nan" | "NaN" | "true" | "false") => Some(s.clone()),
            _ => None,
        };
        if let Some(s) = scalar(self.peek()) {
            let p = self.bump().1;
            return Ok(Literal {
                shape: vec![],
                items: vec![(s, p)],
                pos,
            });
        }
        if *self.peek() != Tok::LBracket {
            return self.error(format!(
                "expected a number or a list like [1, 2], found {}",
                self.peek().describe()
            ));
        }
        // extents[d] is the length of every list at depth d (fixed by the
        // first list closed at that depth); counts[d] counts the current one.
        let mut extents: Vec<Option<usize>> = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let mut leaf_depth: Option<usize> = None;
        let mut items = Vec::new();
        loop {
            let (tok, p) = self.bump();
            match tok {
                Tok::LBracket => {
                    if leaf_depth.is_some_and(|d| counts.len() >= d) {
                        return Err(IrError::parse(p.line, p.col, "list nested deeper than its siblings"));
                    }
                    if let Some(c) = counts.last_mut() {
                        *c += 1;
                    }
                    counts.push(0);
                    if extents.len() < counts.len() {
                        extents.push(None);
                    }
                }
                Tok::RBracket => {
                    let depth = counts.len() - 1;
                    let n = counts.pop().unwrap_or(0);
                    match extents[depth] {
                        None => extents[depth] = Some(n),
                        Some(e) if e != n => {
                            return Err(IrError::parse(
                                p.line,
                                p.col,
                                format!("ragged list: {n} elements where its siblings have {e}"),
                            ));
                        }
                        Some(_) => {}
                    }
                    if counts.is_empty() {
                        break;
                    }
                }
                Tok::Comma => {}
                other => match scalar(&other) {
                    Some(s) => {
                        let depth = counts.len();
                        match leaf_depth {
                            None => leaf_depth = Some(depth),
                            Some(d) if d != depth => {
                                return Err(IrError::parse(
                                    p.line,
                                    p.col,
                                    "a number where a list was expected (ragged nesting)",
                                ));
                            }
                            Some(_) => {}
                        }
                        if let Some(c) = counts.last_mut() {
                            *c += 1;
                        }
                        items.push((s, p));
                    }
                    None => {
                        return Err(IrError::parse(
                            p.line,
                            p.col,
                            format!("expected a number, `,` or `]`, found {}", other.describe()),
                        ))
                    }
                },
            }
        }
        let depth = leaf_depth.unwrap_or(extents.len());
        let shape: Vec<usize> = extents.iter().take(depth).map(|e| e.unwrap_or(0)).collect();
        Ok(Literal { shape, items, pos })
    }

    fn attr_value(&mut self) -> PResult<Attr> {
        match self.peek().clone() {
            Tok::LParen => {
                self.bump();
                let mut v = Vec::new();
                if !self.eat(&Tok::RParen) {
                    loop {
                        v.push(self.usize()?);
                        if self.eat(&Tok::RParen) {
                            break;
                        }
                        self.expect(Tok::Comma)?;
                    }
                }
                Ok(Attr::Ints(v))
            }
            Tok::Number(s) => {
                self.bump();
                if let Ok(v) = s.parse::<usize>() {
                    Ok(Attr::Int(v))
                } else if let Ok(v) = s.parse::<f64>() {
                    Ok(Attr::Float(v))
                } else {
                    self.error(format!("`{s}` is not a number"))
                }
            }
            Tok::Ident(s) => {
                if let Some(d) = DType::from_name(&s) {
                    self.bump();
                    Ok(Attr::DType(d))
                } else if let Ok(v) = s.parse::<f64>() {
                    self.bump();
                    Ok(Attr::Float(v))
                } else {
                    self.error(format!("`{s}` is not an attribute value"))
                }
            }
            t => self.error(format!("expected an attribute value, found {}", t.describe())),
        }
    }

    fn stmt(&mut self) -> PResult<Stmt> {
        let (name, pos) = self.value("a value name")?;
        let mut declared_tuple = None;
        let declared = if self.eat(&Tok::Colon) {
            let p = self.pos();
            if self.eat(&Tok::LParen) {
                let mut tys = Vec::new();
                if !self.eat(&Tok::RParen) {
                    loop {
                        tys.push(self.ty()?);
                        if self.eat(&Tok::RParen) {
                            break;
                        }
                        self.expect(Tok::Comma)?;
                    }
                }
                declared_tuple = Some((tys, p));
                None
            } else {
                Some((self.ty()?, p))
            }
        } else {
            None
        };
        let arena = match self.peek().clone() {
            Tok::Global(s) => match s.parse::<usize>() {
                Ok(v) => {
                    self.bump();
                    Some(v)
                }
                Err(_) => return self.error(format!("expected an arena offset like `@4096`, found `@{s}`")),
            },
            _ => None,
        };
        let mark = match self.peek() {
            Tok::Ident(s) if s == "save" => Some(crate::graph::Mark::Save),
            Tok::Ident(s) if s == "recompute" => Some(crate::graph::Mark::Recompute),
            _ => None,
        };
        if mark.is_some() {
            self.bump();
        }
        self.expect(Tok::Equals)?;
        let (op_name, op_pos) = self.ident("an op name")?;
        let mut attrs = Vec::new();
        // A constant's literal may itself start with `[`, so constants take
        // no attribute list.
        if op_name != "const" {
            attrs = self.attrs()?;
        }
        let literal = if op_name == "const" {
            Some(self.literal()?)
        } else {
            None
        };
        let mut operands = Vec::new();
        if literal.is_none() {
            if let Tok::Value(_) = self.peek() {
                // A value followed by `:` or `=` starts the next statement.
                let next = &self.toks[(self.at + 1).min(self.toks.len() - 1)].0;
                if !matches!(next, Tok::Colon | Tok::Equals) {
                    operands.push(self.value("an operand")?);
                    while self.eat(&Tok::Comma) {
                        operands.push(self.value("an operand")?);
                    }
                }
            }
        }
        let body = if op_name == "scan" { Some(self.region()?) } else { None };
        let from = match self.peek() {
            Tok::Ident(s) if s == "from" && body.is_some() => {
                self.bump();
                let (kw, _) = self.ident("`scan`")?;
                if kw != "scan" {
                    return self.error(format!("expected `scan` after `from`, found `{kw}`"));
                }
                let attrs = self.attrs()?;
                Some((attrs, self.region()?))
            }
            _ => None,
        };
        Ok(Stmt {
            name,
            pos,
            declared,
            kernel: None,
            arena,
            mark,
            op_name,
            op_pos,
            attrs,
            literal,
            operands,
            declared_tuple,
            body,
            from,
        })
    }

    /// An optional attribute list `[key=value, …]`.
    fn attrs(&mut self) -> PResult<Vec<(String, Attr)>> {
        let mut attrs = Vec::new();
        if self.eat(&Tok::LBracket) {
            loop {
                let (key, _) = self.ident("an attribute name")?;
                self.expect(Tok::Equals)?;
                attrs.push((key, self.attr_value()?));
                if self.eat(&Tok::RBracket) {
                    break;
                }
                self.expect(Tok::Comma)?;
            }
        }
        Ok(attrs)
    }

    /// A region's body: `{ graph … }`.
    fn region(&mut self) -> PResult<Graph> {
        self.expect(Tok::LBrace)?;
        if self.depth >= MAX_NESTING {
            return self.error(format!("regions nest more than {MAX_NESTING} deep"));
        }
        self.depth += 1;
        let body = self.graph()?;
        self.depth -= 1;
        self.expect(Tok::RBrace)?;
        Ok(body)
    }
}

/// Parses IR text into a graph. See the module documentation for the format.
pub fn parse(text: &str) -> Result<Graph, IrError> {
    let mut p = Parser {
        toks: lex(text)?,
        at: 0,
        depth: 0,
    };
    let g = p.graph()?;
    if *p.peek() != Tok::Eof {
        return p.error(format!(
            "expected the end of the input after `}}`, found {}",
            p.peek().describe()
        ));
    }
    Ok(g)
}

impl Parser {
    /// Parses one `graph @name(…) -> (…) { … }` (a file's graph, or a
    /// region's body).
    fn graph(&mut self) -> Result<Graph, IrError> {
        let p = self;
        // Header.
        let (kw, _) = p.ident("`graph`")?;
        if kw != "graph" {
            return Err(IrError::parse(1, 1, format!("expected `graph`, found `{kw}`")));
        }
        let name = match p.bump() {
            (Tok::Global(s), _) => s,
            (t, pos) => {
                return Err(IrError::parse(
                    pos.line,
                    pos.col,
                    format!("expected the graph name like `@f`, found {}", t.describe()),
                ))
            }
        };
        p.expect(Tok::LParen)?;
        let mut params = Vec::new();
        if !p.eat(&Tok::RParen) {
            loop {
                let (n, pos) = p.value("an input name")?;
                p.expect(Tok::Colon)?;
                let ty = p.ty()?;
                let mut differentiable = true;
                if let Tok::Ident(s) = p.peek() {
                    if s == "nodiff" {
                        p.bump();
                        differentiable = false;
                    }
                }
                params.push((n, pos, ty, differentiable));
                if p.eat(&Tok::RParen) {
                    break;
                }
                p.expect(Tok::Comma)?;
            }
        }
        p.expect(Tok::Arrow)?;
        p.expect(Tok::LParen)?;
        let mut results = Vec::new();
        if !p.eat(&Tok::RParen) {
            loop {
                let (n, pos) = p.ident("an output name")?;
                p.expect(Tok::Colon)?;
                let ty = p.ty()?;
                results.push((n, pos, ty));
                if p.eat(&Tok::RParen) {
                    break;
                }
                p.expect(Tok::Comma)?;
            }
        }
        p.expect(Tok::LBrace)?;
        // Body.
        let mut stmts: Vec<Stmt> = Vec::new();
        let mut kernel: Option<u32> = None;
        loop {
            match p.peek() {
                Tok::Value(_) => {
                    let mut s = p.stmt()?;
                    s.kernel = kernel;
                    stmts.push(s);
                }
                Tok::Ident(s) if s == "kernel" && kernel.is_none() => {
                    p.bump();
                    let k = p.usize()?;
                    p.expect(Tok::LBrace)?;
                    kernel = Some(k as u32);
                }
                Tok::RBrace if kernel.is_some() => {
                    p.bump();
                    kernel = None;
                }
                Tok::Ident(s) if s == "return" && kernel.is_none() => break,
                t => {
                    let t = t.describe();
                    return p.error(format!(
                        "expected a statement like `%v = op ...` or `return`, found {t}"
                    ));
                }
            }
        }
        let return_pos = p.bump().1;
        let mut returned = Vec::new();
        if let Tok::Value(_) = p.peek() {
            returned.push(p.value("a returned value")?);
            while p.eat(&Tok::Comma) {
                returned.push(p.value("a returned value")?);
            }
        }
        p.expect(Tok::RBrace)?;
        build(name, params, results, stmts, returned, return_pos)
    }
}

fn perr(errors: &mut Vec<ParseError>, pos: Pos, message: impl Into<String>) {
    errors.push(ParseError {
        line: pos.line,
        col: pos.col,
        message: message.into(),
    });
}

type Param = (String, Pos, TensorType, bool);

/// Builds a `scan` op from its attributes and parsed body (and the loop
/// whose states it recomputes, if any).
fn scan_op(attrs: &[(String, Attr)], body: &Graph, from: Option<&(Vec<(String, Attr)>, Graph)>) -> Result<Op, String> {
    let mut consts = None;
    let mut carry = None;
    let mut length = None;
    let mut reverse = false;
    let mut slots = None;
    let mut every = None;
    let mut unroll = 1;
    for (k, v) in attrs {
        let Attr::Int(v) = v else {
            return Err(format!("attribute `{k}` of `scan` must be an integer"));
        };
        match k.as_str() {
            "consts" => consts = Some(*v),
            "carry" => carry = Some(*v),
            "length" => length = Some(*v),
            "reverse" => reverse = *v != 0,
            "slots" => slots = Some(*v),
            "every" => every = Some(*v),
            "unroll" => unroll = *v,
            other => return Err(format!("`scan` has no attribute `{other}`")),
        }
    }
    let schedule = match (slots, every) {
        (Some(s), None) => Some((s, 0)),
        (None, Some(k)) if k > 0 => Some((0, k)),
        (None, Some(_)) => return Err("`every` must be at least 1".into()),
        (Some(_), Some(_)) => return Err("a `scan` takes `slots` (binomial) or `every`, not both".into()),
        (None, None) => None,
    };
    let regen = match (from, schedule) {
        (Some((fattrs, fbody)), Some((slots, every))) => {
            let Op::Scan(forward) = scan_op(fattrs, fbody, None)? else {
                return Err("internal error: a loop parsed as another op".into());
            };
            Some(crate::scan::Regen { forward, slots, every })
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err("a `scan` that recomputes states (`from …`) needs the attribute `slots` or `every`".into())
        }
        (None, Some(_)) => {
            return Err("`slots` is for a `scan` that recomputes states: add `from scan[…] { … }`".into())
        }
    };
    let need = |v: Option<usize>, k: &str| v.ok_or_else(|| format!("`scan` needs the attribute `{k}`"));
    Ok(Op::Scan(std::sync::Arc::new(crate::scan::Scan {
        body: body.clone(),
        length: need(length, "length")?,
        reverse,
        n_consts: need(consts, "consts")?,
        n_carry: need(carry, "carry")?,
        unroll,
        regen,
    })))
}

fn build(
    name: String,
    params: Vec<Param>,
    results: Vec<(String, Pos, TensorType)>,
    stmts: Vec<Stmt>,
    returned: Vec<(String, Pos)>,
    return_pos: Pos,
) -> Result<Graph, IrError> {
    let mut errors = Vec::new();
    let mut g = Graph::new(name);
    // Names: inputs map to nodes; statements map to their index.
    enum Def {
        Input(NodeId),
        Stmt(usize),
    }
    let mut defs: HashMap<&str, Def> = HashMap::new();
    for (n, pos, ty, diff) in &params {
        if defs.contains_key(n.as_str()) {
            perr(&mut errors, *pos, format!("input `%{n}` is declared twice"));
            continue;
        }
        match g.add_input(n, ty.clone(), *diff) {
            Ok(id) => {
                defs.insert(n, Def::Input(id));
            }
            Err(e) => perr(&mut errors, *pos, e.to_string()),
        }
    }
    for (i, s) in stmts.iter().enumerate() {
        if defs.contains_key(s.name.as_str()) {
            perr(&mut errors, s.pos, format!("`%{}` is defined twice", s.name));
            continue;
        }
        defs.insert(&s.name, Def::Stmt(i));
    }
    // Dependencies between statements, for a topological sort that keeps
    // the written order where it can (Kahn's algorithm, smallest index first).
    let mut indegree = vec![0usize; stmts.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); stmts.len()];
    let mut undefined = vec![false; stmts.len()];
    for (i, s) in stmts.iter().enumerate() {
        for (operand, pos) in &s.operands {
            match defs.get(operand.as_str()) {
                Some(Def::Stmt(j)) => {
                    indegree[i] += 1;
                    users[*j].push(i);
                }
                Some(Def::Input(_)) => {}
                None => {
                    perr(&mut errors, *pos, format!("`%{operand}` is not defined"));
                    undefined[i] = true;
                }
            }
        }
    }
    let mut ready: BinaryHeap<Reverse<usize>> = (0..stmts.len()).filter(|&i| indegree[i] == 0).map(Reverse).collect();
    let mut order = Vec::with_capacity(stmts.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &u in &users[i] {
            indegree[u] -= 1;
            if indegree[u] == 0 {
                ready.push(Reverse(u));
            }
        }
    }
    if order.len() < stmts.len() {
        let on_cycle: Vec<String> = (0..stmts.len())
            .filter(|&i| indegree[i] > 0)
            .map(|i| format!("%{}", stmts[i].name))
            .collect();
        let first = (0..stmts.len())
            .find(|&i| indegree[i] > 0)
            .map(|i| stmts[i].pos)
            .unwrap_or(return_pos);
        perr(
            &mut errors,
            first,
            format!("the values {} depend on each other in a cycle", on_cycle.join(", ")),
        );
    }
    // Build nodes in topological order. A statement whose operand failed is
    // skipped quietly, so that one mistake gives one error.
    let mut node_of: Vec<Option<NodeId>> = vec![None; stmts.len()];
    for &i in &order {
        let s = &stmts[i];
        if undefined[i] {
            continue;
        }
        let mut args = Vec::new();
        let mut poisoned = false;
        for (operand, _) in &s.operands {
            match defs.get(operand.as_str()) {
                Some(Def::Input(id)) => args.push(*id),
                Some(Def::Stmt(j)) => match node_of[*j] {
                    Some(id) => args.push(id),
                    None => poisoned = true,
                },
                None => poisoned = true,
            }
        }
        if poisoned {
            continue;
        }
        let op = if let Some(lit) = &s.literal {
            let Some((ty, _)) = &s.declared else {
                perr(
                    &mut errors,
                    s.op_pos,
                    format!("`%{}`: a `const` needs a type annotation like `: f32[]`", s.name),
                );
                continue;
            };
            // A zero-size constant is written down to its first zero extent
            // (`[[], [], []]` for f32[3,0], `[]` for f32[0,4]); its declared
            // type gives the rest of the shape.
            let zero_size = ty.shape.iter().position(|&d| d == 0);
            let literal = match zero_size {
                Some(z) if lit.items.is_empty() && lit.shape == ty.shape[..=z] => Tensor::try_zeros(ty.clone()),
                _ => lit.to_tensor(ty.dtype),
            };
            match literal {
                Ok(t) if t.shape() == ty.shape.as_slice() => Op::Const { value: t },
                Ok(t) => {
                    perr(
                        &mut errors,
                        lit.pos,
                        format!("literal has shape {:?} but the value is declared {ty}", t.shape()),
                    );
                    continue;
                }
                Err(IrError::Parse(mut es)) => {
                    errors.append(&mut es);
                    continue;
                }
                Err(e) => {
                    perr(&mut errors, lit.pos, e.to_string());
                    continue;
                }
            }
        } else if let Some(body) = &s.body {
            match scan_op(&s.attrs, body, s.from.as_ref()) {
                Ok(op) => op,
                Err(message) => {
                    perr(&mut errors, s.op_pos, message);
                    continue;
                }
            }
        } else if s.op_name == "get" {
            let index = match s.attrs.as_slice() {
                [(k, Attr::Int(i))] if k == "index" => *i,
                _ => {
                    perr(
                        &mut errors,
                        s.op_pos,
                        "`get` takes exactly the attribute `index`, like `get[index=0]`",
                    );
                    continue;
                }
            };
            let Some((ty, _)) = &s.declared else {
                perr(
                    &mut errors,
                    s.op_pos,
                    format!("`%{}`: a `get` needs its type, like `: f32[4]`", s.name),
                );
                continue;
            };
            Op::Get { index, ty: ty.clone() }
        } else {
            match Op::from_parts(&s.op_name, &s.attrs) {
                Ok(op) => op,
                Err(message) => {
                    perr(&mut errors, s.op_pos, message);
                    continue;
                }
            }
        };
        // A loop's results are read only through `get`, which must name
        // one of them with its type (what `verify` requires).
        if let Some(message) = crate::verify::region_read_error(&g, &op, &args) {
            perr(&mut errors, s.op_pos, format!("`%{}`: {message}", s.name));
            continue;
        }
        let tys: Vec<&TensorType> = args.iter().map(|&a| g.ty(a)).collect();
        // A loop whose body does not fit is reported by inference below,
        // not as a mismatch of its declared results.
        let fits = !matches!(&op, Op::Scan(scan) if scan.check(&tys).is_err());
        if let (Some((tys, tpos)), true) = (&s.declared_tuple, fits) {
            let results = match &op {
                Op::Scan(scan) => scan.result_types(),
                other => {
                    perr(
                        &mut errors,
                        *tpos,
                        format!("`%{}`: `{}` has one result, not a tuple", s.name, other.name()),
                    );
                    continue;
                }
            };
            if *tys != results {
                let show = |v: &[TensorType]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
                perr(
                    &mut errors,
                    *tpos,
                    format!(
                        "`%{}` is declared ({}) but the scan computes ({})",
                        s.name,
                        show(tys),
                        show(&results)
                    ),
                );
                continue;
            }
        }
        if let (Op::Scan(_), Some((_, dpos))) = (&op, &s.declared) {
            perr(
                &mut errors,
                *dpos,
                format!(
                    "`%{}`: a `scan`'s type is the tuple of its results, like `(f32[4], f32[10,4])`",
                    s.name
                ),
            );
            continue;
        }
        match infer(&op, &tys) {
            Ok(ty) => {
                if let Some((declared, dpos)) = &s.declared {
                    if *declared != ty {
                        perr(
                            &mut errors,
                            *dpos,
                            format!("`%{}` is declared {declared} but `{}` computes {ty}", s.name, s.op_name),
                        );
                        continue;
                    }
                }
                let id = g.add_typed(op, &args, ty);
                g.annotate(id, s.kernel, s.arena);
                g.set_mark(id, s.mark);
                node_of[i] = Some(id);
            }
            Err(message) => perr(&mut errors, s.op_pos, format!("`%{}`: {message}", s.name)),
        }
    }
    // Outputs.
    if returned.len() != results.len() {
        perr(
            &mut errors,
            return_pos,
            format!(
                "the header declares {} output(s) but `return` gives {}",
                results.len(),
                returned.len()
            ),
        );
    }
    for ((rname, rpos, rty), (vname, vpos)) in results.iter().zip(&returned) {
        let node = match defs.get(vname.as_str()) {
            Some(Def::Input(id)) => Some(*id),
            Some(Def::Stmt(j)) => node_of[*j],
            None => {
                perr(&mut errors, *vpos, format!("`%{vname}` is not defined"));
                None
            }
        };
        if let Some(node) = node {
            if let Op::Scan(_) = g.op(node) {
                perr(
                    &mut errors,
                    *vpos,
                    format!("output `{rname}` names the loop `%{vname}`: return a `get` of one of its results"),
                );
            } else if g.ty(node) != rty {
                perr(
                    &mut errors,
                    *vpos,
                    format!("output `{rname}` is declared {rty} but `%{vname}` is {}", g.ty(node)),
                );
            } else if let Err(e) = g.add_output(rname, node) {
                perr(&mut errors, *rpos, e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(g)
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(IrError::Parse(errors))
    }
}

/// Parses a value literal (a number or a nested list such as
/// `[[1, 2], [3, 4]]`) as a tensor of the given dtype.
pub fn parse_literal(text: &str, dtype: DType) -> Result<Tensor, IrError> {
    let mut p = Parser {
        toks: lex(text)?,
        at: 0,
        depth: 0,
    };
    let lit = p.literal()?;
    if *p.peek() != Tok::Eof {
        return p.error(format!("unexpected {} after the value", p.peek().describe()));
    }
    lit.to_tensor(dtype)
}
