//! Translation of the table port's conditions and updates into SQL over a JSON `doc` column.
//!
//! Every attribute name is validated (ASCII letters, digits, `_`) before it enters SQL text; every value
//! is a bound parameter.

use granary_ports::table::{CmpOp, Cond, SortCond, Update, validate_attribute_name};
use granary_ports::{PortError, PortResult};
use rusqlite::types::Value as SqlValue;
use serde_json::Value;

/// A SQL fragment and the parameters it binds, in order of appearance (`?` placeholders).
#[derive(Debug, Default)]
pub(crate) struct Fragment {
    pub(crate) sql: String,
    pub(crate) params: Vec<SqlValue>,
}

pub(crate) fn quote_ident(name: &str) -> PortResult<String> {
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err(PortError::Invalid(format!("name {name:?} must be ASCII letters, digits, '_' or '-'")));
    }
    Ok(format!("\"{name}\""))
}

/// The SQLite table holding the logical table `name`.
pub(crate) fn table_ident(name: &str) -> PortResult<String> {
    quote_ident(&format!("t_{name}"))
}

/// The JSON path of a top-level attribute.
fn path(name: &str) -> PortResult<String> {
    validate_attribute_name(name)?;
    Ok(format!("'$.\"{name}\"'"))
}

/// The expression reading an attribute; index definitions and queries use the very same text, so that
/// SQLite's planner matches them.
pub(crate) fn index_expr(name: &str) -> PortResult<String> {
    Ok(format!("json_extract(doc, {})", path(name)?))
}

/// A scalar JSON value as a SQL value comparable with what `json_extract` returns.
pub(crate) fn scalar(v: &Value) -> PortResult<SqlValue> {
    Ok(match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => SqlValue::Integer(i),
            None => SqlValue::Real(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => SqlValue::Text(s.clone()),
        Value::Array(_) | Value::Object(_) => {
            return Err(PortError::Invalid("conditions and keys compare scalars only, not arrays or objects".into()));
        }
    })
}

/// The condition as SQL over the `doc` column of an existing row.
pub(crate) fn cond(c: &Cond, out: &mut Fragment) -> PortResult<()> {
    match c {
        Cond::ItemExists => out.sql.push('1'),
        Cond::ItemAbsent => out.sql.push('0'),
        Cond::Exists(n) => out.sql.push_str(&format!("json_type(doc, {}) IS NOT NULL", path(n)?)),
        Cond::Absent(n) => out.sql.push_str(&format!("json_type(doc, {}) IS NULL", path(n)?)),
        Cond::Cmp(n, op, v) => {
            let e = index_expr(n)?;
            let sym = op.symbol();
            if *op == CmpOp::Ne {
                out.sql.push_str(&format!("({e} IS NULL OR {e} <> ?)"));
            } else {
                out.sql.push_str(&format!("({e} {sym} ?)"));
            }
            out.params.push(scalar(v)?);
        }
        Cond::And(cs) | Cond::Or(cs) => {
            let (joiner, empty) = if matches!(c, Cond::And(_)) { (" AND ", "1") } else { (" OR ", "0") };
            if cs.is_empty() {
                out.sql.push_str(empty);
            } else {
                out.sql.push('(');
                for (i, sub) in cs.iter().enumerate() {
                    if i > 0 {
                        out.sql.push_str(joiner);
                    }
                    cond(sub, out)?;
                }
                out.sql.push(')');
            }
        }
        Cond::Not(sub) => {
            out.sql.push_str("NOT (");
            cond(sub, out)?;
            out.sql.push(')');
        }
    }
    Ok(())
}

/// The document after `updates`, as a SQL expression over `base` (`doc`, or `'{}'` for a new item).
pub(crate) fn updated_doc(base: &str, updates: &[Update], out: &mut Fragment) -> PortResult<()> {
    let mut seen = std::collections::HashSet::new();
    let mut expr = base.to_owned();
    let mut params = Vec::new();
    for u in updates {
        let name = u.attribute_name();
        if !seen.insert(name) {
            return Err(PortError::Invalid(format!("an update may change attribute {name:?} once")));
        }
        let p = path(name)?;
        expr = match u {
            Update::Set(_, v) => {
                params.push(SqlValue::Text(v.to_string()));
                format!("json_set({expr}, {p}, json(?))")
            }
            Update::Remove(_) => format!("json_remove({expr}, {p})"),
            Update::Add(_, by) => {
                params.push(SqlValue::Integer(*by));
                format!("json_set({expr}, {p}, coalesce(json_extract({base}, {p}), 0) + ?)")
            }
        };
    }
    // Parameters appear in the expression in the order they were pushed: each wrapper's own parameter
    // comes after everything it wraps.
    out.sql.push_str(&expr);
    out.params.extend(params);
    Ok(())
}

/// A condition on a sort-key expression.
pub(crate) fn sort_cond(expr: &str, c: &SortCond, out: &mut Fragment) -> PortResult<()> {
    let one = |sym: &str, v: &Value, out: &mut Fragment| -> PortResult<()> {
        out.sql.push_str(&format!(" AND {expr} {sym} ?"));
        out.params.push(scalar(v)?);
        Ok(())
    };
    match c {
        SortCond::Eq(v) => one("=", v, out)?,
        SortCond::Lt(v) => one("<", v, out)?,
        SortCond::Le(v) => one("<=", v, out)?,
        SortCond::Gt(v) => one(">", v, out)?,
        SortCond::Ge(v) => one(">=", v, out)?,
        SortCond::Between(a, b) => {
            one(">=", a, out)?;
            one("<=", b, out)?;
        }
        SortCond::BeginsWith(prefix) => {
            // A range, so that the index serves it: [prefix, prefix + the highest code point).
            out.sql.push_str(&format!(" AND {expr} >= ? AND {expr} < ?"));
            out.params.push(SqlValue::Text(prefix.clone()));
            out.params.push(SqlValue::Text(format!("{prefix}\u{10FFFF}")));
        }
    }
    Ok(())
}
