//! Compose variable interpolation: `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:?message}`, `${VAR?message}`, `${VAR:+alt}`, `${VAR+alt}` and `$$` for a literal `$`.
//!
//! Values come only from the map the caller gives (the decrypted, allow-listed environment);
//! the init's own environment is never consulted. An unset variable without a default becomes
//! the empty string, as in Docker Compose.

use std::collections::BTreeMap;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    /// `${` without a matching `}`.
    #[error("unterminated ${{...}}")]
    Unterminated,
    /// `${}` or a name that is not `[A-Za-z_][A-Za-z0-9_]*`.
    #[error("invalid variable name {name:?}")]
    InvalidName {
        /// The rejected name.
        name: String,
    },
    /// `${VAR:?message}` with VAR unset (or empty).
    #[error("required variable {name} is missing: {message}")]
    RequiredMissing {
        /// Variable name.
        name: String,
        /// The compose file's message.
        message: String,
    },
    /// Too deeply nested defaults.
    #[error("nesting deeper than 8 levels")]
    TooDeep,
}

fn is_name_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Interpolates `input` with values from `env`.
pub fn interpolate(
    input: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, InterpolateError> {
    interpolate_depth(input, env, 0)
}

fn interpolate_depth(
    input: &str,
    env: &BTreeMap<String, String>,
    depth: u8,
) -> Result<String, InterpolateError> {
    if depth > 8 {
        return Err(InterpolateError::TooDeep);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let mut chars = after.chars();
        match chars.next() {
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('{') => {
                let body_start = &after[1..];
                let end = matching_brace(body_start).ok_or(InterpolateError::Unterminated)?;
                let body = &body_start[..end];
                out.push_str(&expand_braced(body, env, depth)?);
                rest = &body_start[end + 1..];
            }
            Some(c) if is_name_start(c) => {
                let len = after
                    .char_indices()
                    .find(|&(_, c)| !is_name_char(c))
                    .map_or(after.len(), |(i, _)| i);
                let name = &after[..len];
                out.push_str(env.get(name).map_or("", String::as_str));
                rest = &after[len..];
            }
            // A lone `$` (end of text, or before a non-name character) stays literal.
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Index of the `}` closing a `${` whose body starts at `text`, honouring nested `${`.
fn matching_brace(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'$' if bytes.get(i + 1) == Some(&b'$') => i += 1,
            b'$' if bytes.get(i + 1) == Some(&b'{') => {
                depth += 1;
                i += 1;
            }
            b'}' if depth == 0 => return Some(i),
            b'}' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

fn expand_braced(
    body: &str,
    env: &BTreeMap<String, String>,
    depth: u8,
) -> Result<String, InterpolateError> {
    let name_len = body
        .char_indices()
        .find(|&(_, c)| !is_name_char(c))
        .map_or(body.len(), |(i, _)| i);
    let name = &body[..name_len];
    if name.is_empty() || !name.starts_with(is_name_start) {
        return Err(InterpolateError::InvalidName {
            name: body.chars().take(64).collect(),
        });
    }
    let op = &body[name_len..];
    let value = env.get(name);
    let set_non_empty = value.is_some_and(|v| !v.is_empty());
    let nested = |text: &str| interpolate_depth(text, env, depth + 1);
    let plain = || value.cloned().unwrap_or_default();
    if op.is_empty() {
        return Ok(plain());
    }
    let (cond_set, operator, arg) = if let Some(arg) = op.strip_prefix(":-") {
        (set_non_empty, '-', arg)
    } else if let Some(arg) = op.strip_prefix('-') {
        (value.is_some(), '-', arg)
    } else if let Some(arg) = op.strip_prefix(":?") {
        (set_non_empty, '?', arg)
    } else if let Some(arg) = op.strip_prefix('?') {
        (value.is_some(), '?', arg)
    } else if let Some(arg) = op.strip_prefix(":+") {
        (set_non_empty, '+', arg)
    } else if let Some(arg) = op.strip_prefix('+') {
        (value.is_some(), '+', arg)
    } else {
        return Err(InterpolateError::InvalidName {
            name: body.chars().take(64).collect(),
        });
    };
    match (operator, cond_set) {
        ('-', true) | ('?', true) => Ok(plain()),
        ('-', false) => nested(arg),
        ('?', false) => Err(InterpolateError::RequiredMissing {
            name: name.to_owned(),
            message: nested(arg)?,
        }),
        ('+', true) => nested(arg),
        _ => Ok(String::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [("A", "alpha"), ("EMPTY", ""), ("B", "b")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn expands_forms() {
        let cases = [
            ("plain", "plain"),
            ("$A", "alpha"),
            ("x${A}y", "xalphay"),
            ("${MISSING}", ""),
            ("${MISSING:-def}", "def"),
            ("${EMPTY:-def}", "def"),
            ("${EMPTY-def}", ""),
            ("${MISSING-def}", "def"),
            ("${A:-def}", "alpha"),
            ("${MISSING:-${B}-x}", "b-x"),
            ("$$A", "$A"),
            ("$${A}", "${A}"),
            ("cost $5", "cost $5"),
            ("end$", "end$"),
            ("${A:+set}", "set"),
            ("${MISSING:+set}", ""),
            ("$A-$B", "alpha-b"),
        ];
        for (input, want) in cases {
            assert_eq!(interpolate(input, &env()).unwrap(), want, "{input}");
        }
    }

    #[test]
    fn refuses_malformed() {
        assert_eq!(
            interpolate("${A", &env()),
            Err(InterpolateError::Unterminated)
        );
        assert!(matches!(
            interpolate("${}", &env()),
            Err(InterpolateError::InvalidName { .. })
        ));
        assert!(matches!(
            interpolate("${1A}", &env()),
            Err(InterpolateError::InvalidName { .. })
        ));
        assert!(matches!(
            interpolate("${A/x/y}", &env()),
            Err(InterpolateError::InvalidName { .. })
        ));
        assert_eq!(
            interpolate("${MISSING:?set it}", &env()),
            Err(InterpolateError::RequiredMissing {
                name: "MISSING".into(),
                message: "set it".into()
            })
        );
    }
}
