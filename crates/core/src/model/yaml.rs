//! Loading YAML documents with positions.
//!
//! serde-saphyr reports line and column for syntax errors and unknown keys. Problems found
//! later (a bad MS number, a version on a text file) are found on typed values, which carry no
//! position; so the document is also read once into a tree of spans, and a problem names the
//! path of its value (`identification[0].version`) to be given that value's line and column.

use super::problem::{Located, Problem};
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::Spanned;
use std::collections::HashMap;
use std::fmt;

/// 1-based line and column of a value in a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
pub struct Position {
    pub line: u32,
    pub column: u32,
}

/// Where each value of a document starts, by path (`targets[0].os`; the root is "").
#[derive(Debug, Clone, Default)]
pub struct Positions(HashMap<String, Position>);

impl Positions {
    /// The position of `path`, or of its nearest ancestor that exists in the document
    /// (a missing key is reported where its parent mapping starts).
    pub fn of(&self, path: &str) -> Position {
        let mut p = path;
        loop {
            if let Some(pos) = self.0.get(p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p = &p[..i],
                None if !p.is_empty() => p = "",
                None => return Position { line: 1, column: 1 },
            }
        }
    }
}

/// A YAML error with its position and what was expected.
#[derive(Debug, Clone)]
pub struct YamlError {
    pub position: Position,
    pub kind: YamlErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YamlErrorKind {
    Syntax,
    UnknownKey,
    /// A required key is absent; `message` names it.
    MissingKey,
}

/// Parses `text` as `R`, resolves it, and places every problem in `file`: the one loader of
/// the scenario, group policy, rollout and sources documents (`schema` names the file in
/// schemas/ that a syntax error points to).
pub fn load_document<R: DeserializeOwned, T>(
    file: &str,
    text: &str,
    schema: &str,
    resolve: impl Fn(&R) -> (Option<T>, Vec<Problem>),
) -> Result<T, Vec<Located>> {
    let (raw, positions) = match parse::<R>(text) {
        Ok(v) => v,
        Err(e) => {
            return Err(vec![Located {
                file: file.to_string(),
                line: e.position.line,
                column: e.position.column,
                problem: Problem::error(
                    "yaml",
                    "",
                    e.message,
                    format!("fix the YAML at this place (see schemas/{schema}.schema.json)"),
                ),
            }]);
        }
    };
    let (doc, problems) = resolve(&raw);
    doc.ok_or_else(|| place(file, &positions, problems))
}

/// Gives each problem the line and column of the value its path names.
pub fn place(file: &str, positions: &Positions, problems: Vec<Problem>) -> Vec<Located> {
    problems
        .into_iter()
        .map(|p| {
            let pos = positions.of(&p.path);
            Located {
                file: file.to_string(),
                line: pos.line,
                column: pos.column,
                problem: p,
            }
        })
        .collect()
}

/// Deserializes `text` into `T` (rejecting unknown keys where `T` says so) and records
/// the position of every value.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<(T, Positions), YamlError> {
    let value: T = match serde_saphyr::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let mut err = yaml_error(e);
            if err.kind == YamlErrorKind::MissingKey {
                // serde-saphyr places it where the mapping ends; its start is where to add the key.
                if let Ok(tree) = serde_saphyr::from_str::<Spanned<Tree>>(text) {
                    err.position = Position {
                        line: tree.referenced.line() as u32,
                        column: tree.referenced.column() as u32,
                    };
                }
            }
            return Err(err);
        }
    };
    let tree: Spanned<Tree> = serde_saphyr::from_str(text).map_err(yaml_error)?;
    let mut positions = Positions::default();
    tree.walk(String::new(), &mut positions.0);
    Ok((value, positions))
}

fn yaml_error(e: serde_saphyr::Error) -> YamlError {
    let position = e
        .location()
        .map(|l| Position {
            line: l.line() as u32,
            column: l.column() as u32,
        })
        .unwrap_or(Position { line: 1, column: 1 });
    // The Display form carries a source snippet; the first line is the message itself.
    let full = e.to_string();
    let message = full
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid YAML")
        .trim()
        .trim_start_matches("error: ");
    // The position is reported on its own; drop the copy inside the message.
    let message = match message.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => message,
    }
    .to_string();
    // serde reports these two through its own fixed wording; there is no typed variant to match.
    let kind = if message.starts_with("unknown field") {
        YamlErrorKind::UnknownKey
    } else if message.starts_with("missing field") {
        YamlErrorKind::MissingKey
    } else {
        YamlErrorKind::Syntax
    };
    YamlError {
        position,
        kind,
        message,
    }
}

/// A document reduced to its shape: mappings, sequences and (ignored) scalars.
enum Tree {
    Map(Vec<(String, Spanned<Tree>)>),
    Seq(Vec<Spanned<Tree>>),
    Leaf,
}

trait Walk {
    fn walk(&self, path: String, out: &mut HashMap<String, Position>);
}

impl Walk for Spanned<Tree> {
    fn walk(&self, path: String, out: &mut HashMap<String, Position>) {
        let at = Position {
            line: self.referenced.line() as u32,
            column: self.referenced.column() as u32,
        };
        match &self.value {
            Tree::Map(entries) => {
                for (k, v) in entries {
                    let child = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    v.walk(child, out);
                }
            }
            Tree::Seq(items) => {
                for (i, v) in items.iter().enumerate() {
                    v.walk(format!("{path}[{i}]"), out);
                }
            }
            Tree::Leaf => {}
        }
        out.entry(path).or_insert(at);
    }
}

/// A mapping key of any scalar type, as text.
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        Ok(Key(match v {
            serde_json::Value::String(s) => s,
            other => other.to_string(),
        }))
    }
}

impl<'de> Deserialize<'de> for Tree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Tree;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Tree, A::Error> {
                let mut entries = Vec::new();
                while let Some(Key(k)) = m.next_key()? {
                    entries.push((k, m.next_value()?));
                }
                Ok(Tree::Map(entries))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut s: A) -> Result<Tree, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = s.next_element()? {
                    items.push(v);
                }
                Ok(Tree::Seq(items))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_none<E: de::Error>(self) -> Result<Tree, E> {
                Ok(Tree::Leaf)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Tree, D2::Error> {
                Tree::deserialize(d)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        id: String,
        items: Vec<Item>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        name: String,
        #[serde(default)]
        version: Option<String>,
    }

    #[test]
    fn positions_of_nested_values() {
        let text = "id: x\nitems:\n  - name: a\n  - name: b\n    version: '1.0'\n";
        let (_doc, pos): (Doc, _) = parse(text).unwrap();
        assert_eq!(pos.of("id"), Position { line: 1, column: 5 });
        assert_eq!(
            pos.of("items[1].version"),
            Position {
                line: 5,
                column: 14
            }
        );
        // A missing key falls back to its parent mapping.
        assert_eq!(pos.of("items[0].version"), pos.of("items[0]"));
        assert_eq!(pos.of("items[0]").line, 3);
    }

    #[test]
    fn unknown_key_has_position() {
        let text = "id: x\nitems:\n  - name: a\n    verison: '1.0'\n";
        let err = parse::<Doc>(text).unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::UnknownKey, "{err:?}");
        assert_eq!(err.position.line, 4);
        assert!(err.message.contains("verison"), "{}", err.message);
    }

    #[test]
    fn missing_key_is_placed_at_its_mapping() {
        let err = parse::<Doc>("# c\nid: x\nother: 1\n").unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::UnknownKey);
        let err = parse::<Doc>("# c\nid: x\n").unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::MissingKey, "{err:?}");
        assert!(err.message.contains("items"), "{}", err.message);
        assert_eq!(err.position.line, 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse::<Doc>("id: x\nitems: [\n").unwrap_err();
        assert_eq!(err.kind, YamlErrorKind::Syntax);
        assert!(err.position.line >= 2, "{err:?}");
    }
}
