//! Conditions, updates and key conditions as DynamoDB expressions with placeholder names and values,
//! and JSON values as attribute values.

use aws_sdk_dynamodb::types::AttributeValue;
use granary_ports::table::{Cond, SortCond, Update, validate_attribute_name};
use granary_ports::{PortError, PortResult};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A JSON value as a DynamoDB attribute value.
pub(crate) fn to_av(v: &Value) -> AttributeValue {
    match v {
        Value::Null => AttributeValue::Null(true),
        Value::Bool(b) => AttributeValue::Bool(*b),
        Value::Number(n) => AttributeValue::N(n.to_string()),
        Value::String(s) => AttributeValue::S(s.clone()),
        Value::Array(items) => AttributeValue::L(items.iter().map(to_av).collect()),
        Value::Object(m) => AttributeValue::M(m.iter().map(|(k, v)| (k.clone(), to_av(v))).collect()),
    }
}

/// A DynamoDB number as JSON: an integer when it is one.
fn number(n: &str) -> Value {
    n.parse::<i64>()
        .map(Value::from)
        .ok()
        .or_else(|| n.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number))
        .unwrap_or_else(|| Value::String(n.to_owned()))
}

/// A DynamoDB attribute value as JSON.
pub(crate) fn from_av(av: &AttributeValue) -> Value {
    match av {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => number(n),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::L(items) => Value::Array(items.iter().map(from_av).collect()),
        AttributeValue::M(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), from_av(v))).collect::<Map<_, _>>()),
        AttributeValue::Ss(ss) => Value::from(ss.clone()),
        AttributeValue::Ns(ns) => Value::Array(ns.iter().map(|n| number(n)).collect()),
        _ => Value::Null,
    }
}

/// A scalar for a key or comparison.
pub(crate) fn scalar(v: &Value) -> PortResult<AttributeValue> {
    match v {
        Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null => Ok(to_av(v)),
        _ => Err(PortError::Invalid("conditions and keys compare scalars only, not arrays or objects".into())),
    }
}

/// Placeholders collected while writing an expression.
#[derive(Debug, Default)]
pub(crate) struct Expr {
    names: HashMap<String, String>,
    by_attr: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    /// The placeholder of an attribute name (one per name).
    pub(crate) fn name(&mut self, attr: &str) -> String {
        if let Some(p) = self.by_attr.get(attr) {
            return p.clone();
        }
        let p = format!("#n{}", self.by_attr.len());
        self.by_attr.insert(attr.to_owned(), p.clone());
        self.names.insert(p.clone(), attr.to_owned());
        p
    }

    /// The placeholder of a value.
    pub(crate) fn value(&mut self, v: AttributeValue) -> String {
        let p = format!(":v{}", self.values.len());
        self.values.insert(p.clone(), v);
        p
    }

    fn checked_name(&mut self, attr: &str) -> PortResult<String> {
        validate_attribute_name(attr)?;
        Ok(self.name(attr))
    }

    /// A condition expression.
    pub(crate) fn cond(&mut self, c: &Cond) -> PortResult<String> {
        Ok(match c {
            Cond::ItemExists => format!("attribute_exists({})", self.name("pk")),
            Cond::ItemAbsent => format!("attribute_not_exists({})", self.name("pk")),
            Cond::Exists(n) => format!("attribute_exists({})", self.checked_name(n)?),
            Cond::Absent(n) => format!("attribute_not_exists({})", self.checked_name(n)?),
            Cond::Cmp(n, op, v) => {
                let name = self.checked_name(n)?;
                let value = self.value(scalar(v)?);
                let sym = op.symbol();
                format!("{name} {sym} {value}")
            }
            Cond::And(cs) | Cond::Or(cs) if cs.is_empty() => {
                // DynamoDB has no TRUE or FALSE literal.
                let pk = self.name("pk");
                if matches!(c, Cond::And(_)) {
                    format!("(attribute_exists({pk}) OR attribute_not_exists({pk}))")
                } else {
                    format!("(attribute_exists({pk}) AND attribute_not_exists({pk}))")
                }
            }
            Cond::And(cs) | Cond::Or(cs) => {
                let joiner = if matches!(c, Cond::And(_)) { " AND " } else { " OR " };
                let parts = cs.iter().map(|sub| self.cond(sub)).collect::<PortResult<Vec<_>>>()?;
                format!("({})", parts.join(joiner))
            }
            Cond::Not(sub) => format!("(NOT {})", self.cond(sub)?),
        })
    }

    /// An update expression.
    pub(crate) fn updates(&mut self, updates: &[Update]) -> PortResult<String> {
        granary_ports::table::validate_updates(updates)?;
        let (mut set, mut remove, mut add) = (Vec::new(), Vec::new(), Vec::new());
        for u in updates {
            let name = self.checked_name(u.attribute_name())?;
            match u {
                Update::Set(_, v) => {
                    let value = self.value(to_av(v));
                    set.push(format!("{name} = {value}"));
                }
                Update::Remove(_) => remove.push(name),
                Update::Add(_, by) => {
                    let value = self.value(AttributeValue::N(by.to_string()));
                    add.push(format!("{name} {value}"));
                }
            }
        }
        let mut out = Vec::new();
        for (keyword, parts) in [("SET", set), ("REMOVE", remove), ("ADD", add)] {
            if !parts.is_empty() {
                out.push(format!("{keyword} {}", parts.join(", ")));
            }
        }
        Ok(out.join(" "))
    }

    /// A key condition: partition equality and an optional sort-key condition.
    pub(crate) fn key_condition(&mut self, partition_attr: &str, partition: &Value, sort: Option<(&str, &SortCond)>) -> PortResult<String> {
        let p = self.name(partition_attr);
        let pv = self.value(scalar(partition)?);
        let mut out = format!("{p} = {pv}");
        if let Some((attr, cond)) = sort {
            let s = self.name(attr);
            let clause = match cond {
                SortCond::Eq(v) => format!("{s} = {}", self.value(scalar(v)?)),
                SortCond::Lt(v) => format!("{s} < {}", self.value(scalar(v)?)),
                SortCond::Le(v) => format!("{s} <= {}", self.value(scalar(v)?)),
                SortCond::Gt(v) => format!("{s} > {}", self.value(scalar(v)?)),
                SortCond::Ge(v) => format!("{s} >= {}", self.value(scalar(v)?)),
                SortCond::Between(a, b) => {
                    let (a, b) = (self.value(scalar(a)?), self.value(scalar(b)?));
                    format!("{s} BETWEEN {a} AND {b}")
                }
                SortCond::BeginsWith(prefix) => format!("begins_with({s}, {})", self.value(AttributeValue::S(prefix.clone()))),
            };
            out.push_str(" AND ");
            out.push_str(&clause);
        }
        Ok(out)
    }

    /// Names to send, if any.
    pub(crate) fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }

    /// Values to send, if any.
    pub(crate) fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip() {
        let v = json!({"s": "x", "i": 3, "f": 1.5, "b": true, "n": null, "l": [1, "a"], "m": {"k": [true]}});
        assert_eq!(from_av(&to_av(&v)), v);
    }

    #[test]
    fn expressions_use_placeholders() {
        let mut e = Expr::default();
        let c = e.cond(&Cond::Or(vec![Cond::absent("n"), Cond::le("n", 4)])).unwrap();
        assert_eq!(c, "(attribute_not_exists(#n0) OR #n0 <= :v0)");
        let u = e.updates(&[Update::add("n", 1), Update::set("s", "x"), Update::remove("r")]).unwrap();
        assert_eq!(u, "SET #n1 = :v2 REMOVE #n2 ADD #n0 :v1");
        assert_eq!(e.names().unwrap().len(), 3);
        assert!(e.cond(&Cond::eq("bad name", 1)).is_err(), "names are validated");
    }
}
