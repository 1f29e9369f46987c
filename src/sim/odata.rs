//! A real subset of OData `$filter` and `$orderby` for the simulator: `eq ne gt lt ge le`,
//! `and or not`, parentheses, quoted strings with `''` escapes, unquoted or quoted datetimes,
//! numbers, `true false null`, and `a/b` property paths. Lambdas (`any`/`all`) and functions are
//! refused with a 400, as a strict server would.

use std::cmp::Ordering;

use serde_json::Value;

use crate::timefmt::parse_timestamp;

/// Why a `$filter` or `$orderby` expression was refused (the simulator answers 400 with the text).
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("unterminated string literal")]
    UnterminatedString,
    #[error("missing ')'")]
    MissingClose,
    #[error("unsupported operator '{0}'")]
    UnsupportedOperator(String),
    #[error("expected a comparison operator, found {0}")]
    ExpectedOperator(String),
    #[error("functions and lambdas ('{0}(...)') are not supported")]
    Function(String),
    #[error("bad literal '{0}'")]
    BadLiteral(String),
    #[error("expected a property or a literal, found {0}")]
    ExpectedOperand(String),
    #[error("unexpected {0}")]
    Unexpected(String),
    #[error("empty $orderby key")]
    EmptyOrderKey,
    #[error("bad $orderby direction '{0}'")]
    BadDirection(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Compare(Operand, CmpOp, Operand),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Operand {
    Path(Vec<String>),
    Literal(Value),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Str(String),
    Word(String),
}

fn tokenize(input: &str) -> Result<Vec<Token>, QueryError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' => i += 1,
            '(' => {
                tokens.push(Token::Open);
                i += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                i += 1;
            }
            '\'' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(QueryError::UnterminatedString),
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            s.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                tokens.push(Token::Str(s));
            }
            _ => {
                let start = i;
                while i < chars.len() && !matches!(chars[i], ' ' | '\t' | '\n' | '(' | ')' | '\'') {
                    i += 1;
                }
                tokens.push(Token::Word(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(tokens)
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.pos), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Expr, QueryError> {
        if self.peek_word("not") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.tokens.get(self.pos) == Some(&Token::Open) {
            self.pos += 1;
            let inner = self.or()?;
            if self.tokens.get(self.pos) != Some(&Token::Close) {
                return Err(QueryError::MissingClose);
            }
            self.pos += 1;
            return Ok(inner);
        }
        let left = self.operand()?;
        let op = match self.tokens.get(self.pos) {
            Some(Token::Word(w)) => match w.to_ascii_lowercase().as_str() {
                "eq" => CmpOp::Eq,
                "ne" => CmpOp::Ne,
                "gt" => CmpOp::Gt,
                "lt" => CmpOp::Lt,
                "ge" => CmpOp::Ge,
                "le" => CmpOp::Le,
                other => return Err(QueryError::UnsupportedOperator(other.to_string())),
            },
            other => return Err(QueryError::ExpectedOperator(format!("{other:?}"))),
        };
        self.pos += 1;
        let right = self.operand()?;
        Ok(Expr::Compare(left, op, right))
    }

    fn operand(&mut self) -> Result<Operand, QueryError> {
        let token = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        match token {
            Some(Token::Str(s)) => Ok(Operand::Literal(Value::String(s))),
            Some(Token::Word(w)) => {
                if self.tokens.get(self.pos) == Some(&Token::Open) {
                    return Err(QueryError::Function(w));
                }
                Ok(match w.as_str() {
                    "true" => Operand::Literal(Value::Bool(true)),
                    "false" => Operand::Literal(Value::Bool(false)),
                    "null" => Operand::Literal(Value::Null),
                    _ if w.starts_with(|c: char| c.is_ascii_digit() || c == '-') => {
                        if parse_timestamp(&w).is_some() {
                            Operand::Literal(Value::String(w))
                        } else {
                            let n: f64 =
                                w.parse().map_err(|_| QueryError::BadLiteral(w.clone()))?;
                            Operand::Literal(serde_json::json!(n))
                        }
                    }
                    _ => Operand::Path(w.split('/').map(str::to_string).collect()),
                })
            }
            other => Err(QueryError::ExpectedOperand(format!("{other:?}"))),
        }
    }
}

/// Parses a `$filter` expression.
pub(crate) fn parse_filter(input: &str) -> Result<Expr, QueryError> {
    let mut parser = Parser {
        tokens: tokenize(input)?,
        pos: 0,
    };
    let expr = parser.or()?;
    if parser.pos != parser.tokens.len() {
        return Err(QueryError::Unexpected(format!(
            "{:?}",
            parser.tokens[parser.pos]
        )));
    }
    Ok(expr)
}

fn lookup<'a>(record: &'a Value, path: &[String]) -> &'a Value {
    path.iter()
        .try_fold(record, |v, key| v.get(key))
        .unwrap_or(&Value::Null)
}

fn resolve<'a>(record: &'a Value, operand: &'a Operand) -> &'a Value {
    match operand {
        Operand::Path(p) => lookup(record, p),
        Operand::Literal(v) => v,
    }
}

/// Orders two JSON values the way OData compares them: datetimes as instants, numbers as
/// numbers, strings as strings; anything else (or a null) is unordered.
pub(crate) fn compare_values(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::String(x), Value::String(y)) => {
            let looks_like_time = |s: &str| s.len() >= 11 && s.as_bytes()[10] == b'T';
            if looks_like_time(x) || looks_like_time(y) {
                if let (Some(tx), Some(ty)) = (parse_timestamp(x), parse_timestamp(y)) {
                    return Some(tx.cmp(&ty));
                }
            }
            Some(x.cmp(y))
        }
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

pub(crate) fn matches(expr: &Expr, record: &Value) -> bool {
    match expr {
        Expr::And(a, b) => matches(a, record) && matches(b, record),
        Expr::Or(a, b) => matches(a, record) || matches(b, record),
        Expr::Not(a) => !matches(a, record),
        Expr::Compare(l, op, r) => {
            let (a, b) = (resolve(record, l), resolve(record, r));
            match op {
                CmpOp::Eq => a == b || compare_values(a, b) == Some(Ordering::Equal),
                CmpOp::Ne => !(a == b || compare_values(a, b) == Some(Ordering::Equal)),
                CmpOp::Gt => compare_values(a, b) == Some(Ordering::Greater),
                CmpOp::Lt => compare_values(a, b) == Some(Ordering::Less),
                CmpOp::Ge => matches!(
                    compare_values(a, b),
                    Some(Ordering::Greater | Ordering::Equal)
                ),
                CmpOp::Le => matches!(compare_values(a, b), Some(Ordering::Less | Ordering::Equal)),
            }
        }
    }
}

/// One `$orderby` key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderKey {
    pub(crate) path: Vec<String>,
    pub(crate) descending: bool,
}

pub(crate) fn parse_orderby(input: &str) -> Result<Vec<OrderKey>, QueryError> {
    input
        .split(',')
        .map(|part| {
            let mut words = part.split_whitespace();
            let field = words.next().ok_or(QueryError::EmptyOrderKey)?;
            let descending = match words.next().map(str::to_ascii_lowercase).as_deref() {
                None | Some("asc") => false,
                Some("desc") => true,
                Some(other) => return Err(QueryError::BadDirection(other.to_string())),
            };
            Ok(OrderKey {
                path: field.split('/').map(str::to_string).collect(),
                descending,
            })
        })
        .collect()
}

pub(crate) fn order(a: &Value, b: &Value, keys: &[OrderKey]) -> Ordering {
    for key in keys {
        let ord =
            compare_values(lookup(a, &key.path), lookup(b, &key.path)).unwrap_or(Ordering::Equal);
        let ord = if key.descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(filter: &str, record: &Value) -> bool {
        matches(&parse_filter(filter).unwrap(), record)
    }

    #[test]
    fn documented_filters_work() {
        let r = json!({"direction": "Incoming", "substatus": "Pending", "status": "New",
            "qualification": "SalesQualified", "type": "Shared",
            "customerProfile": {"name": "O'Neil Ltd", "address": {"country": "US"}},
            "updatedDateTime": "2026-11-10T08:14:05.8754901Z", "details": {"dealValue": 100}});
        assert!(m("direction eq 'Incoming' and substatus eq 'Pending'", &r));
        assert!(m("(type eq 'Shared' and direction eq 'Incoming')", &r));
        assert!(m(
            "customerProfile/address/country eq 'US' and direction eq 'Incoming'",
            &r
        ));
        assert!(m("customerProfile/name eq 'O''Neil Ltd'", &r));
        assert!(m("updatedDateTime gt 2026-11-10T08:14:05Z", &r));
        assert!(!m("updatedDateTime gt 2026-11-10T08:14:06Z", &r));
        assert!(m("updatedDateTime gt '2026-11-01T00:00:00Z'", &r));
        assert!(m(
            "details/dealValue ge 100 and not (status eq 'Closed')",
            &r
        ));
        assert!(m("status eq 'Closed' or qualification ne 'Direct'", &r));
        assert!(!m("expirationDateTime ne null", &r));
    }

    #[test]
    fn unsupported_syntax_is_an_error() {
        assert!(parse_filter("team/any(t:t/email eq 'a')").is_err());
        assert!(parse_filter("status eq 'New").is_err());
        assert!(parse_filter("status like 'New'").is_err());
        assert!(parse_filter("(status eq 'New'").is_err());
    }

    #[test]
    fn orderby_sorts_by_time_with_direction() {
        let keys = parse_orderby("createdDateTime desc").unwrap();
        let a = json!({"createdDateTime": "2026-11-10T08:00:00Z"});
        let b = json!({"createdDateTime": "2026-11-10T09:00:00.5Z"});
        assert_eq!(order(&a, &b, &keys), Ordering::Greater);
        assert!(parse_orderby("createdDateTime sideways").is_err());
    }
}
