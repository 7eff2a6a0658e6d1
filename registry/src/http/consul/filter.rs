//! A small subset of Consul's `?filter=` expressions, enough for the common
//! selections: `Selector == "value"`, `!=`, `Selector contains "value"`,
//! `"value" in Selector`, `not in`, joined with `and`. Selectors name fields of
//! the instance in the shape of the endpoint (`Service.Tags`, `ServiceMeta.env`,
//! `Service.Meta.env`, `ServiceAddress`, `Node`, …). Anything else is refused
//! with a 400 naming what was not understood, never silently ignored.

use crate::catalog::Instance;

/// A parsed filter: every clause must hold.
#[derive(Debug, PartialEq, Eq)]
pub struct Filter {
    clauses: Vec<Clause>,
}

#[derive(Debug, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Contains,
    NotContains,
}

#[derive(Debug, PartialEq, Eq)]
struct Clause {
    field: Field,
    op: Op,
    value: String,
}

#[derive(Debug, PartialEq, Eq)]
enum Field {
    Id,
    Name,
    Address,
    Port,
    Tags,
    Meta(String),
    Node,
}

/// A clause of a `?filter=` that is outside the supported subset.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unsupported filter expression: {clause:?}")]
pub struct FilterError {
    /// The clause, as written.
    pub clause: String,
}

impl Filter {
    /// Parses `expr`; the error says which clause was not understood.
    pub fn parse(expr: &str) -> Result<Filter, FilterError> {
        let clauses = split_and(expr)
            .into_iter()
            .map(|c| parse_clause(c.trim()))
            .collect::<Result<_, _>>()?;
        Ok(Filter { clauses })
    }

    /// Whether `inst` (on node `node`) passes.
    pub fn matches(&self, inst: &Instance, node: &str) -> bool {
        self.clauses.iter().all(|c| c.matches(inst, node))
    }
}

impl Clause {
    fn matches(&self, inst: &Instance, node: &str) -> bool {
        let spec = &inst.spec;
        let port = spec.port.to_string();
        let scalar: Option<&str> = match &self.field {
            Field::Id => Some(&inst.id),
            Field::Name => Some(&inst.service),
            Field::Address => Some(&spec.address),
            Field::Port => Some(&port),
            Field::Node => Some(node),
            Field::Meta(key) => Some(spec.meta.get(key).map_or("", String::as_str)),
            Field::Tags => None,
        };
        match (&self.op, scalar) {
            (Op::Eq, Some(v)) => v == self.value,
            (Op::Ne, Some(v)) => v != self.value,
            (Op::Contains, Some(v)) => v.contains(&self.value),
            (Op::NotContains, Some(v)) => !v.contains(&self.value),
            (Op::Contains, None) => spec.tags.contains(&self.value),
            (Op::NotContains, None) => !spec.tags.contains(&self.value),
            // A list compared with a string is never equal.
            (Op::Eq, None) => false,
            (Op::Ne, None) => true,
        }
    }
}

/// Splits on ` and ` outside quotes. Walks characters, not bytes, so a
/// multi-byte character is never cut (slicing inside one panics).
fn split_and(expr: &str) -> Vec<&str> {
    const AND: &str = " and ";
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut chars = expr.char_indices();
    while let Some((i, c)) = chars.next() {
        if c == '"' {
            quoted = !quoted;
        } else if !quoted && expr[i..].starts_with(AND) {
            parts.push(&expr[start..i]);
            start = i + AND.len();
            // Skip the rest of ` and `: ASCII, so `start` is a boundary.
            for _ in 1..AND.len() {
                chars.next();
            }
        }
    }
    parts.push(&expr[start..]);
    parts
}

fn parse_clause(clause: &str) -> Result<Clause, FilterError> {
    let unsupported = || FilterError {
        clause: clause.to_owned(),
    };
    // `"value" in Selector` / `"value" not in Selector`
    if let Some(rest) = clause.strip_prefix('"') {
        let (value, rest) = rest.split_once('"').ok_or_else(unsupported)?;
        let rest = rest.trim();
        let (op, selector) = if let Some(s) = rest.strip_prefix("not in ") {
            (Op::NotContains, s)
        } else if let Some(s) = rest.strip_prefix("in ") {
            (Op::Contains, s)
        } else {
            return Err(unsupported());
        };
        return Ok(Clause {
            field: field(selector.trim()).ok_or_else(unsupported)?,
            op,
            value: value.to_owned(),
        });
    }
    for (token, op) in [
        (" == ", Op::Eq),
        (" != ", Op::Ne),
        (" not contains ", Op::NotContains),
        (" contains ", Op::Contains),
    ] {
        if let Some((selector, value)) = clause.split_once(token) {
            let value = value
                .trim()
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(unsupported)?;
            return Ok(Clause {
                field: field(selector.trim()).ok_or_else(unsupported)?,
                op,
                value: value.to_owned(),
            });
        }
    }
    Err(unsupported())
}

fn field(selector: &str) -> Option<Field> {
    let s = selector
        .strip_prefix("Service.")
        .map(|rest| format!("Service{rest}"))
        .unwrap_or_else(|| selector.to_owned());
    if let Some(key) = s.strip_prefix("ServiceMeta.") {
        return Some(Field::Meta(key.to_owned()));
    }
    Some(match s.as_str() {
        "ServiceID" => Field::Id,
        "ServiceService" | "ServiceName" => Field::Name,
        "ServiceAddress" => Field::Address,
        "ServicePort" => Field::Port,
        "ServiceTags" => Field::Tags,
        "Node" | "Node.Node" => Field::Node,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_supported_forms() {
        let f =
            Filter::parse(r#"Service.Tags contains "v2" and ServiceMeta.env == "prod""#).unwrap();
        assert_eq!(
            f.clauses,
            [
                Clause {
                    field: Field::Tags,
                    op: Op::Contains,
                    value: "v2".into()
                },
                Clause {
                    field: Field::Meta("env".into()),
                    op: Op::Eq,
                    value: "prod".into()
                },
            ]
        );
        let f = Filter::parse(r#""canary" not in ServiceTags"#).unwrap();
        assert_eq!(f.clauses[0].op, Op::NotContains);
        let f = Filter::parse(r#"Service.Meta.team != "a and b""#).unwrap();
        assert_eq!(f.clauses[0].value, "a and b", "and inside quotes");
        let f = Filter::parse(
            "ServiceMeta.owner == \"j\u{fc}rgen\" and \"\u{e9}t\u{e9}\" in ServiceTags",
        )
        .unwrap();
        assert_eq!(f.clauses[0].value, "j\u{fc}rgen", "multi-byte characters");
        assert_eq!(f.clauses[1].value, "\u{e9}t\u{e9}");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for bad in [
            "Service.Tags is empty",
            "Checks.Status == \"passing\"",
            "ServiceID == unquoted",
            "(ServiceID == \"a\") or (ServiceID == \"b\")",
            "\u{fc}",
            "ServiceID == \"\u{fc}\" and \u{fc}",
            "\u{fc} and ServiceID == \"a\"",
            "\"\u{fc}",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
        let err = Filter::parse(r#"ServiceID == "a" and Service.Tags is empty"#).unwrap_err();
        assert_eq!(err.clause, "Service.Tags is empty");
        assert_eq!(
            err.to_string(),
            r#"unsupported filter expression: "Service.Tags is empty""#
        );
    }
}
