//! [`Doc`]: a JSON tree that, unlike `serde_json::Value`, can repeat a key
//! and hold any number text, so that what reaches a parser is exactly what
//! an attacker could send.

#![allow(dead_code)]

use proptest::sample::Index;
use serde_json::Value;

/// A JSON document as written on the wire: objects may repeat keys, numbers
/// are kept as their text.
#[derive(Clone, Debug, PartialEq)]
pub enum Doc {
    Null,
    Bool(bool),
    Num(String),
    Str(String),
    Arr(Vec<Doc>),
    Obj(Vec<(String, Doc)>),
}

impl Doc {
    pub fn from_value(value: &Value) -> Doc {
        match value {
            Value::Null => Doc::Null,
            Value::Bool(flag) => Doc::Bool(*flag),
            Value::Number(number) => Doc::Num(number.to_string()),
            Value::String(text) => Doc::Str(text.clone()),
            Value::Array(items) => Doc::Arr(items.iter().map(Doc::from_value).collect()),
            Value::Object(entries) => Doc::Obj(
                entries
                    .iter()
                    .map(|(key, value)| (key.clone(), Doc::from_value(value)))
                    .collect(),
            ),
        }
    }

    /// Returns the JSON text (compact, keys in their order, repeats kept).
    pub fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    pub fn write(&self, out: &mut String) {
        match self {
            Doc::Null => out.push_str("null"),
            Doc::Bool(flag) => out.push_str(if *flag { "true" } else { "false" }),
            Doc::Num(number) => out.push_str(number),
            Doc::Str(text) => write_string(text, out),
            Doc::Arr(items) => {
                out.push('[');
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Doc::Obj(entries) => {
                out.push('{');
                for (index, (key, value)) in entries.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    write_string(key, out);
                    out.push(':');
                    value.write(out);
                }
                out.push('}');
            }
        }
    }

    pub fn depth(&self) -> usize {
        match self {
            Doc::Arr(items) => 1 + items.iter().map(Doc::depth).max().unwrap_or(0),
            Doc::Obj(entries) => 1 + entries.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }

    /// Returns the paths (child positions from the root) of the nodes for
    /// which `keep` holds, in pre-order.
    pub fn paths(&self, keep: fn(&Doc) -> bool) -> Vec<Vec<usize>> {
        fn walk(
            node: &Doc,
            keep: fn(&Doc) -> bool,
            path: &mut Vec<usize>,
            out: &mut Vec<Vec<usize>>,
        ) {
            if keep(node) {
                out.push(path.clone());
            }
            let children: Vec<&Doc> = match node {
                Doc::Arr(items) => items.iter().collect(),
                Doc::Obj(entries) => entries.iter().map(|(_, value)| value).collect(),
                _ => Vec::new(),
            };
            for (position, child) in children.into_iter().enumerate() {
                path.push(position);
                walk(child, keep, path, out);
                path.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, keep, &mut Vec::new(), &mut out);
        out
    }

    pub fn at_mut(&mut self, path: &[usize]) -> &mut Doc {
        let mut node = self;
        for &position in path {
            node = match node {
                Doc::Arr(items) => &mut items[position],
                Doc::Obj(entries) => &mut entries[position].1,
                _ => unreachable!("paths only lead through containers"),
            };
        }
        node
    }

    /// Returns the node that `pick` chooses among those for which `keep`
    /// holds, if any does.
    pub fn pick_mut(&mut self, pick: &Index, keep: fn(&Doc) -> bool) -> Option<&mut Doc> {
        let paths = self.paths(keep);
        if paths.is_empty() {
            return None;
        }
        let path = paths[pick.index(paths.len())].clone();
        Some(self.at_mut(&path))
    }

    pub fn len(&self) -> usize {
        match self {
            Doc::Arr(items) => items.len(),
            Doc::Obj(entries) => entries.len(),
            _ => 0,
        }
    }
}

pub fn write_string(text: &str, out: &mut String) {
    out.push_str(&serde_json::to_string(text).expect("a string serializes"));
}
