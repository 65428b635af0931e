//! A small XML tree for RIMs and the canonicalization XML-DSig needs (spec §1.7).
//!
//! Parsing is strict and closed: no DTD (so no entity expansion), no processing
//! instructions, only the five predefined entities and character references; comments are
//! dropped (the RIMs use canonicalization *without* comments). Line ends are normalized and
//! attribute values whitespace-normalized as an XML processor must.
//!
//! Canonicalization is inclusive C14N (1.0 and 1.1 give identical output here because the
//! RIMs carry no `xml:*` attributes; any `xml:` attribute is refused rather than handled
//! partially): namespace declarations first, sorted by prefix, rendered when they differ
//! from the nearest output ancestor's; other attributes sorted by (namespace URI, local
//! name); empty elements as start/end pairs; the C14N escaping of text and attribute values.
//! A subtree (`<SignedInfo>`) is rendered with every namespace in scope at its apex.

use std::collections::BTreeMap;

use quick_xml::XmlVersion;
use quick_xml::events::Event;
use quick_xml::reader::Reader;
use thiserror::Error;

/// Upper bound on nesting depth (RIMs nest 5 levels).
const MAX_DEPTH: usize = 64;

/// Why a document is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum XmlError {
    /// The document is not UTF-8.
    #[error("document is not UTF-8")]
    DecodeUtf8,
    /// The tokenizer failed.
    #[error("XML syntax error at byte {position}: {message}")]
    ParseSyntax { position: u64, message: String },
    /// A DOCTYPE (and with it any entity declaration) is present.
    #[error("DOCTYPE / entity declarations are not allowed")]
    CheckDoctype,
    /// A processing instruction is present.
    #[error("processing instructions are not allowed")]
    CheckProcessingInstruction,
    /// An entity other than the predefined five.
    #[error("unknown entity reference &{name};")]
    ResolveEntity { name: String },
    /// An element or attribute prefix has no namespace binding.
    #[error("prefix {prefix:?} is not declared")]
    ResolvePrefix { prefix: String },
    /// An `xml:*` attribute (its C14N 1.1 handling is not implemented).
    #[error("xml:* attributes are not supported")]
    CheckXmlAttribute,
    /// Content outside the single root element.
    #[error("content outside the root element")]
    CheckStructure,
    /// Nested too deeply.
    #[error("elements nest deeper than {MAX_DEPTH}")]
    CheckDepth,
}

/// One attribute (namespace declarations are kept separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attribute {
    /// The name as written (`ns2:Hash0`).
    pub(crate) qname: String,
    /// Namespace URI ("" for unprefixed attributes).
    pub(crate) namespace: String,
    /// Local name.
    pub(crate) local: String,
    /// The normalized, unescaped value.
    pub(crate) value: String,
}

/// A child node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Node {
    Element(Element),
    Text(String),
}

/// An element with its resolved names and in-scope namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Element {
    /// The name as written (`ds:SignedInfo`).
    pub(crate) qname: String,
    /// Namespace URI of the element.
    pub(crate) namespace: String,
    /// Local name.
    pub(crate) local: String,
    /// Attributes other than namespace declarations.
    pub(crate) attributes: Vec<Attribute>,
    /// Every namespace binding in scope here (prefix "" = default namespace; "" URI =
    /// undeclared default).
    pub(crate) in_scope: BTreeMap<String, String>,
    /// Children in document order.
    pub(crate) children: Vec<Node>,
}

impl Element {
    /// Child elements with this namespace and local name.
    pub(crate) fn children_named<'a>(
        &'a self,
        namespace: &'a str,
        local: &'a str,
    ) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter_map(move |n| match n {
            Node::Element(e) if e.namespace == namespace && e.local == local => Some(e),
            _ => None,
        })
    }

    /// An unprefixed attribute's value.
    pub(crate) fn attribute(&self, local: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|a| a.namespace.is_empty() && a.local == local)
            .map(|a| a.value.as_str())
    }

    /// The concatenated text of the direct text children.
    pub(crate) fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }
}

fn split_qname(qname: &str) -> (&str, &str) {
    match qname.split_once(':') {
        Some((prefix, local)) => (prefix, local),
        None => ("", qname),
    }
}

fn syntax(reader: &Reader<&[u8]>, error: impl std::fmt::Display) -> XmlError {
    XmlError::ParseSyntax {
        position: reader.buffer_position(),
        message: error.to_string(),
    }
}

/// Parses a whole document and returns its root element.
pub(crate) fn parse(bytes: &[u8]) -> Result<Element, XmlError> {
    let text = std::str::from_utf8(bytes).map_err(|_| XmlError::DecodeUtf8)?;
    let mut reader = Reader::from_str(text);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Element> = Vec::new();
    let mut root: Option<Element> = None;
    let mut pending_text = String::new();

    fn flush(stack: &mut [Element], pending: &mut String) -> Result<(), XmlError> {
        if pending.is_empty() {
            return Ok(());
        }
        match stack.last_mut() {
            Some(parent) => parent.children.push(Node::Text(std::mem::take(pending))),
            None if pending
                .chars()
                .all(|c| matches!(c, ' ' | '\t' | '\n' | '\r')) =>
            {
                pending.clear();
            }
            None => return Err(XmlError::CheckStructure),
        }
        Ok(())
    }

    loop {
        let event = reader.read_event().map_err(|e| syntax(&reader, e))?;
        match event {
            Event::Start(start) => {
                flush(&mut stack, &mut pending_text)?;
                if root.is_some() || stack.len() >= MAX_DEPTH {
                    return Err(if root.is_some() {
                        XmlError::CheckStructure
                    } else {
                        XmlError::CheckDepth
                    });
                }
                let parent_scope = stack.last().map(|e| &e.in_scope);
                let element = open_element(&reader, &start, parent_scope)?;
                stack.push(element);
            }
            Event::Empty(start) => {
                flush(&mut stack, &mut pending_text)?;
                if root.is_some() {
                    return Err(XmlError::CheckStructure);
                }
                let parent_scope = stack.last().map(|e| &e.in_scope);
                let element = open_element(&reader, &start, parent_scope)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::End(_) => {
                flush(&mut stack, &mut pending_text)?;
                let element = stack.pop().ok_or(XmlError::CheckStructure)?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(Node::Element(element)),
                    None => root = Some(element),
                }
            }
            Event::Text(t) => pending_text.push_str(&t.xml10_content()),
            Event::CData(c) => {
                if stack.is_empty() {
                    return Err(XmlError::CheckStructure);
                }
                let raw: &str = c.as_ref();
                pending_text.push_str(&raw.replace("\r\n", "\n").replace('\r', "\n"));
            }
            Event::GeneralRef(r) => {
                if let Some(ch) = r.resolve_char_ref().map_err(|e| syntax(&reader, e))? {
                    pending_text.push(ch);
                } else {
                    let name = AsRef::<str>::as_ref(&r).to_owned();
                    let ch = match name.as_str() {
                        "amp" => '&',
                        "lt" => '<',
                        "gt" => '>',
                        "apos" => '\'',
                        "quot" => '"',
                        _ => return Err(XmlError::ResolveEntity { name }),
                    };
                    pending_text.push(ch);
                }
            }
            Event::Comment(_) => {}
            Event::Decl(_) => {
                if !stack.is_empty() || root.is_some() {
                    return Err(XmlError::CheckStructure);
                }
            }
            Event::PI(_) => return Err(XmlError::CheckProcessingInstruction),
            Event::DocType(_) => return Err(XmlError::CheckDoctype),
            Event::Eof => break,
        }
    }
    flush(&mut stack, &mut pending_text)?;
    match (root, stack.is_empty()) {
        (Some(root), true) => Ok(root),
        _ => Err(XmlError::CheckStructure),
    }
}

fn open_element(
    reader: &Reader<&[u8]>,
    start: &quick_xml::events::BytesStart<'_>,
    parent_scope: Option<&BTreeMap<String, String>>,
) -> Result<Element, XmlError> {
    let qname = AsRef::<str>::as_ref(&start.name()).to_owned();
    let mut in_scope = parent_scope.cloned().unwrap_or_default();
    let mut raw_attributes = Vec::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| syntax(reader, e))?;
        let key = AsRef::<str>::as_ref(&attribute.key).to_owned();
        let value = attribute
            .normalized_value(XmlVersion::Implicit1_0)
            .map_err(|e| syntax(reader, e))?
            .into_owned();
        if key == "xmlns" {
            in_scope.insert(String::new(), value);
        } else if let Some(prefix) = key.strip_prefix("xmlns:") {
            if prefix == "xml" || prefix == "xmlns" {
                return Err(XmlError::CheckXmlAttribute);
            }
            in_scope.insert(prefix.to_owned(), value);
        } else {
            raw_attributes.push((key, value));
        }
    }
    let resolve = |prefix: &str| -> Result<String, XmlError> {
        in_scope
            .get(prefix)
            .filter(|uri| !uri.is_empty() || prefix.is_empty())
            .cloned()
            .ok_or_else(|| XmlError::ResolvePrefix {
                prefix: prefix.to_owned(),
            })
    };
    let (prefix, local) = split_qname(&qname);
    let namespace = if prefix.is_empty() {
        in_scope.get("").cloned().unwrap_or_default()
    } else {
        resolve(prefix)?
    };
    let mut attributes = Vec::with_capacity(raw_attributes.len());
    for (key, value) in raw_attributes {
        let (prefix, local) = split_qname(&key);
        let namespace = match prefix {
            "" => String::new(),
            "xml" => return Err(XmlError::CheckXmlAttribute),
            p => resolve(p)?,
        };
        attributes.push(Attribute {
            local: local.to_owned(),
            qname: key.clone(),
            namespace,
            value,
        });
    }
    Ok(Element {
        local: local.to_owned(),
        qname: qname.clone(),
        namespace,
        attributes,
        in_scope,
        children: Vec::new(),
    })
}

fn escape_text(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

fn escape_attribute(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#x9;"),
            '\n' => out.push_str("&#xA;"),
            '\r' => out.push_str("&#xD;"),
            c => out.push(c),
        }
    }
}

/// Canonical form of `element`'s subtree (inclusive C14N, no comments), leaving out the
/// subtree `exclude` (the enveloped-signature transform) wherever it appears.
pub(crate) fn canonicalize(element: &Element, exclude: Option<&Element>) -> String {
    let mut out = String::new();
    write_element(element, &BTreeMap::new(), exclude, &mut out);
    out
}

fn write_element(
    element: &Element,
    rendered: &BTreeMap<String, String>,
    exclude: Option<&Element>,
    out: &mut String,
) {
    out.push('<');
    out.push_str(&element.qname);
    // Namespace nodes (sorted by prefix, the default first) that the nearest output
    // ancestor does not already carry with the same value.
    let parent_default = rendered.get("").map(String::as_str).unwrap_or("");
    let own_default = element.in_scope.get("").map(String::as_str).unwrap_or("");
    if own_default.is_empty() && !parent_default.is_empty() {
        out.push_str(" xmlns=\"\"");
    }
    for (prefix, uri) in &element.in_scope {
        if prefix.is_empty() {
            if !uri.is_empty() && uri != parent_default {
                out.push_str(" xmlns=\"");
                escape_attribute(uri, out);
                out.push('"');
            }
        } else if rendered.get(prefix) != Some(uri) {
            out.push_str(" xmlns:");
            out.push_str(prefix);
            out.push_str("=\"");
            escape_attribute(uri, out);
            out.push('"');
        }
    }
    let mut attributes: Vec<&Attribute> = element.attributes.iter().collect();
    attributes.sort_by(|a, b| (&a.namespace, &a.local).cmp(&(&b.namespace, &b.local)));
    for attribute in attributes {
        out.push(' ');
        out.push_str(&attribute.qname);
        out.push_str("=\"");
        escape_attribute(&attribute.value, out);
        out.push('"');
    }
    out.push('>');
    for child in &element.children {
        match child {
            Node::Text(text) => escape_text(text, out),
            Node::Element(e) => {
                if exclude.is_some_and(|x| std::ptr::eq(x, e)) {
                    continue;
                }
                write_element(e, &element.in_scope, exclude, out);
            }
        }
    }
    out.push_str("</");
    out.push_str(&element.qname);
    out.push('>');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_and_expands() {
        let doc = br#"<?xml version="1.0"?>
<a:r xmlns:b="urn:b" xmlns:a="urn:a" z="1" b:y="&amp;&#x9;" a="x
y"><!-- c --><e/><a:s xmlns:a="urn:a">t&lt;&gt;</a:s></a:r>
"#;
        let root = parse(doc).unwrap();
        assert_eq!(
            canonicalize(&root, None),
            "<a:r xmlns:a=\"urn:a\" xmlns:b=\"urn:b\" a=\"x y\" z=\"1\" b:y=\"&amp;&#x9;\"><e></e><a:s>t&lt;&gt;</a:s></a:r>"
        );
    }

    #[test]
    fn subtree_carries_inherited_namespaces() {
        let doc = br#"<r xmlns="urn:d" xmlns:p="urn:p"><p:s><p:t/></p:s></r>"#;
        let root = parse(doc).unwrap();
        let Node::Element(s) = &root.children[0] else {
            panic!("no child")
        };
        assert_eq!(
            canonicalize(s, None),
            "<p:s xmlns=\"urn:d\" xmlns:p=\"urn:p\"><p:t></p:t></p:s>"
        );
    }

    #[test]
    fn doctype_and_entities_are_refused() {
        let bomb = br#"<!DOCTYPE r [<!ENTITY a "aaaa">]><r>&a;</r>"#;
        assert_eq!(parse(bomb), Err(XmlError::CheckDoctype));
        assert_eq!(
            parse(b"<r>&a;</r>"),
            Err(XmlError::ResolveEntity { name: "a".into() })
        );
        assert_eq!(
            parse(b"<r><?pi x?></r>"),
            Err(XmlError::CheckProcessingInstruction)
        );
        assert!(matches!(
            parse(b"<r><s></r>"),
            Err(XmlError::ParseSyntax { .. })
        ));
        assert_eq!(
            parse(b"<p:r/>"),
            Err(XmlError::ResolvePrefix { prefix: "p".into() })
        );
    }
}
