//! Typed access to the generic YAML tree, with dotted paths in every error.

use std::time::Duration;

use serde_norway::Value;

use crate::ComposeError;

/// A YAML value and where it sits in the document.
#[derive(Debug, Clone)]
pub(super) struct Node<'a> {
    pub(super) path: String,
    value: &'a Value,
}

/// A YAML mapping and its path.
#[derive(Debug, Clone)]
pub(super) struct Mapping<'a> {
    path: String,
    map: &'a serde_norway::Mapping,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Node<'a> {
    pub(super) fn new(path: &str, value: &'a Value) -> Self {
        Self {
            path: path.to_owned(),
            value,
        }
    }

    fn wrong(&self, expected: &'static str) -> ComposeError {
        ComposeError::WrongType {
            path: if self.path.is_empty() {
                "(document)".to_owned()
            } else {
                self.path.clone()
            },
            expected,
        }
    }

    pub(super) fn is_null(&self) -> bool {
        self.value.is_null()
    }

    /// Null or `{}`.
    pub(super) fn is_empty_mapping(&self) -> bool {
        match self.value {
            Value::Null => true,
            Value::Mapping(m) => m
                .iter()
                .all(|(k, _)| k.as_str().is_some_and(|k| k.starts_with("x-"))),
            _ => false,
        }
    }

    pub(super) fn mapping(&self) -> Result<Mapping<'a>, ComposeError> {
        match self.value {
            Value::Mapping(map) => Ok(Mapping {
                path: self.path.clone(),
                map,
            }),
            _ => Err(self.wrong("a mapping")),
        }
    }

    pub(super) fn sequence(&self) -> Result<Vec<Node<'a>>, ComposeError> {
        match self.value {
            Value::Sequence(items) => Ok(items
                .iter()
                .enumerate()
                .map(|(i, v)| Node::new(&format!("{}[{i}]", self.path), v))
                .collect()),
            _ => Err(self.wrong("a list")),
        }
    }

    pub(super) fn string(&self) -> Result<String, ComposeError> {
        match self.value {
            Value::String(s) if !s.contains('\0') => Ok(s.clone()),
            _ => Err(self.wrong("a string")),
        }
    }

    /// A string, number or boolean as text.
    pub(super) fn scalar_string(&self) -> Result<String, ComposeError> {
        match self.value {
            Value::String(s) if !s.contains('\0') => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(self.wrong("a scalar")),
        }
    }

    pub(super) fn boolean(&self) -> Result<bool, ComposeError> {
        match self.value {
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            _ => Err(self.wrong("a boolean")),
        }
    }

    pub(super) fn unsigned(&self, max: u64) -> Result<u64, ComposeError> {
        let n = match self.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.parse::<u64>().ok(),
            _ => None,
        };
        n.filter(|&n| n <= max)
            .ok_or_else(|| self.wrong("a non-negative integer in range"))
    }

    /// Compose duration: `1h2m3s`, `10s`, `500ms`, `20us`; units required.
    pub(super) fn duration(&self) -> Result<Duration, ComposeError> {
        let text = self.scalar_string()?;
        parse_duration(&text).ok_or_else(|| self.wrong("a duration like 1m30s, 10s or 500ms"))
    }

    /// `command`/`entrypoint`: a list of strings, or a string split like a POSIX shell.
    pub(super) fn command(&self) -> Result<Vec<String>, ComposeError> {
        match self.value {
            Value::Null => Ok(Vec::new()),
            Value::String(s) => split_shell_words(s).ok_or_else(|| ComposeError::InvalidValue {
                path: self.path.clone(),
                reason: "unbalanced quotes".to_owned(),
            }),
            Value::Sequence(_) => self.string_list(),
            _ => Err(self.wrong("a string or a list of strings")),
        }
    }

    pub(super) fn string_list(&self) -> Result<Vec<String>, ComposeError> {
        self.sequence()?.iter().map(Node::scalar_string).collect()
    }
}

impl<'a> Mapping<'a> {
    /// Every key not in `allowed` (ignoring `x-` keys), one error each.
    pub(super) fn unknown_keys(&self, allowed: &[&str]) -> Vec<ComposeError> {
        let mut errors = Vec::new();
        for (key, _) in self.map {
            let Some(key) = key.as_str() else {
                errors.push(ComposeError::WrongType {
                    path: self.path.clone(),
                    expected: "string keys",
                });
                continue;
            };
            if !key.starts_with("x-") && !allowed.contains(&key) {
                errors.push(ComposeError::UnknownKey {
                    path: if self.path.is_empty() {
                        "(top level)".to_owned()
                    } else {
                        self.path.clone()
                    },
                    key: key.to_owned(),
                });
            }
        }
        errors
    }

    /// Fails on the first key not in `allowed` (ignoring `x-` keys).
    pub(super) fn check_keys(&self, allowed: &[&str]) -> Result<(), ComposeError> {
        for (key, _) in self.map {
            let Some(key) = key.as_str() else {
                return Err(ComposeError::WrongType {
                    path: self.path.clone(),
                    expected: "string keys",
                });
            };
            if key.starts_with("x-") || allowed.contains(&key) {
                continue;
            }
            return Err(ComposeError::UnknownKey {
                path: if self.path.is_empty() {
                    "(top level)".to_owned()
                } else {
                    self.path.clone()
                },
                key: key.to_owned(),
            });
        }
        Ok(())
    }

    pub(super) fn get(&self, key: &str) -> Option<Node<'a>> {
        self.map
            .get(key)
            .map(|v| Node::new(&join(&self.path, key), v))
    }

    pub(super) fn entries(&self) -> Result<Vec<(String, Node<'a>)>, ComposeError> {
        self.map
            .iter()
            .map(|(k, v)| {
                let key = match k {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(ComposeError::WrongType {
                            path: self.path.clone(),
                            expected: "string keys",
                        });
                    }
                };
                let path = join(&self.path, &key);
                Ok((key, Node::new(&path, v)))
            })
            .collect()
    }
}

/// Parses a Go-style duration with mandatory units (`h`, `m`, `s`, `ms`, `us`).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    if rest == "0" {
        return Some(Duration::ZERO);
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (number, tail) = rest.split_at(num_end);
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_end);
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        let value: f64 = number.parse().ok()?;
        let part = Duration::try_from_secs_f64(value * scale).ok()?;
        total = total.checked_add(part)?;
        rest = next;
    }
    Some(total)
}

/// Splits a command string into words like a POSIX shell (quotes and backslashes; no expansion).
pub(crate) fn split_shell_words(text: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => current.push(c),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            c @ ('"' | '\\' | '$' | '`') => current.push(c),
                            '\n' => {}
                            c => {
                                current.push('\\');
                                current.push(c);
                            }
                        },
                        c => current.push(c),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next()? {
                    '\n' => {}
                    c => current.push(c),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                current.push(c);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Some(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn shell_words() {
        assert_eq!(
            split_shell_words(r#"sh -c 'echo "a b"' "x\"y" z\ w"#).unwrap(),
            vec!["sh", "-c", "echo \"a b\"", "x\"y", "z w"]
        );
        assert_eq!(split_shell_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_shell_words("''").unwrap(), vec![""]);
        assert!(split_shell_words("'open").is_none());
    }
}
