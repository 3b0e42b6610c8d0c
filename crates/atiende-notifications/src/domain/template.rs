//! Template text and personalisation.
//!
//! A template is text with placeholders: `((name))` is replaced by the value
//! of `name`; `((name??text))` shows `text` when the value of `name` is
//! "yes", "true" or "1" (case-insensitive). Names are 1 to 100 letters,
//! digits, spaces, `_` and `-`, matched case-insensitively and ignoring
//! spaces. Anything between `((` and `))` that is not a valid placeholder is
//! ordinary text, so no input is ever a syntax error.

use std::collections::BTreeMap;

const MAX_NAME_CHARS: usize = 100;

/// A personalisation value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    List(Vec<String>),
}

impl Value {
    fn is_truthy(&self) -> bool {
        match self {
            Self::Text(text) => {
                let text = text.trim();
                ["yes", "true", "1"]
                    .iter()
                    .any(|t| text.eq_ignore_ascii_case(t))
            }
            Self::List(_) => false,
        }
    }
}

/// Personalisation values keyed by normalised placeholder name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Personalisation(BTreeMap<String, Value>);

impl Personalisation {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a value; keys are normalised like placeholder names.
    pub fn insert(&mut self, name: &str, value: Value) {
        self.0.insert(normalise(name), value);
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key)
    }
}

impl<'a> FromIterator<(&'a str, Value)> for Personalisation {
    fn from_iter<I: IntoIterator<Item = (&'a str, Value)>>(iter: I) -> Self {
        let mut p = Self::new();
        for (name, value) in iter {
            p.insert(name, value);
        }
        p
    }
}

/// The key a name is matched by: lower case, without spaces.
pub fn normalise(name: &str) -> String {
    name.chars()
        .filter(|c| *c != ' ')
        .flat_map(char::to_lowercase)
        .collect()
}

fn is_valid_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&count)
        && name.trim() == name
        && name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '_' | '-'))
}

/// One piece of template text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Text(String),
    /// `((name))`: the name as written.
    Placeholder(String),
    /// `((name??text))`.
    Conditional {
        name: String,
        text: String,
    },
}

impl Segment {
    fn name(&self) -> Option<&str> {
        match self {
            Self::Text(_) => None,
            Self::Placeholder(name) | Self::Conditional { name, .. } => Some(name),
        }
    }
}

/// Template text split into segments. Parsing never fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateText(Vec<Segment>);

impl TemplateText {
    pub fn parse(raw: &str) -> Self {
        let mut segments = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(open) = rest.find("((") {
            let after = &rest[open + 2..];
            let placeholder = after.find("))").and_then(|close| {
                let inner = &after[..close];
                let segment = match inner.split_once("??") {
                    Some((name, cond)) if is_valid_name(name) && !cond.contains("((") => {
                        Segment::Conditional {
                            name: name.to_owned(),
                            text: cond.to_owned(),
                        }
                    }
                    None if is_valid_name(inner) => Segment::Placeholder(inner.to_owned()),
                    _ => return None,
                };
                Some((segment, close))
            });
            match placeholder {
                Some((segment, close)) => {
                    text.push_str(&rest[..open]);
                    if !text.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut text)));
                    }
                    segments.push(segment);
                    rest = &after[close + 2..];
                }
                None => {
                    // Not a placeholder: keep one "(" as text and look again
                    // from the next character, so "(((a)))" finds "((a))".
                    text.push_str(&rest[..=open]);
                    rest = &rest[open + 1..];
                }
            }
        }
        text.push_str(rest);
        if !text.is_empty() {
            segments.push(Segment::Text(text));
        }
        Self(segments)
    }

    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// Placeholder names as first written, in order of first use, without
    /// duplicates (by normalised name).
    pub fn placeholders(&self) -> Vec<String> {
        let mut seen = Vec::<String>::new();
        let mut names = Vec::new();
        for name in self.0.iter().filter_map(Segment::name) {
            let key = normalise(name);
            if !seen.contains(&key) {
                seen.push(key);
                names.push(name.to_owned());
            }
        }
        names
    }
}

/// What personalisation could not provide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    /// Placeholders without a value, as written.
    pub missing: Vec<String>,
    /// Placeholders whose value is a list where only text is allowed.
    pub list_not_allowed: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.list_not_allowed.is_empty()
    }

    fn missing(&mut self, name: &str) {
        if !self.missing.iter().any(|m| normalise(m) == normalise(name)) {
            self.missing.push(name.to_owned());
        }
    }

    fn list(&mut self, name: &str) {
        if !self
            .list_not_allowed
            .iter()
            .any(|m| normalise(m) == normalise(name))
        {
            self.list_not_allowed.push(name.to_owned());
        }
    }

    pub fn merge(&mut self, other: Problems) {
        for name in other.missing {
            self.missing(&name);
        }
        for name in other.list_not_allowed {
            self.list(&name);
        }
    }
}

/// A segment after personalisation, still knowing what came from the
/// template and what from a value (values are escaped, never interpreted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filled<'a> {
    Template(&'a str),
    Value(&'a str),
    List(&'a [String]),
    /// A placeholder without a value, kept as written (previews only).
    Unfilled(&'a str),
}

/// Fills the segments. Missing values and lists where `allow_lists` is false
/// are reported in `problems`; in their place the placeholder stays as it was
/// written.
pub fn fill<'a>(
    segments: &'a [Segment],
    values: &'a Personalisation,
    allow_lists: bool,
    problems: &mut Problems,
) -> Vec<Filled<'a>> {
    let mut out = Vec::with_capacity(segments.len());
    for segment in segments {
        match segment {
            Segment::Text(text) => out.push(Filled::Template(text)),
            Segment::Placeholder(name) => match values.get(&normalise(name)) {
                Some(Value::Text(value)) => out.push(Filled::Value(value)),
                Some(Value::List(items)) if allow_lists => out.push(Filled::List(items)),
                Some(Value::List(_)) => {
                    problems.list(name);
                    out.push(Filled::Unfilled(name));
                }
                None => {
                    problems.missing(name);
                    out.push(Filled::Unfilled(name));
                }
            },
            Segment::Conditional { name, text } => match values.get(&normalise(name)) {
                Some(value @ Value::Text(_)) => {
                    if value.is_truthy() {
                        out.push(Filled::Template(text));
                    }
                }
                Some(Value::List(_)) => problems.list(name),
                None => problems.missing(name),
            },
        }
    }
    out
}

/// Plain text of filled segments: lists one item per line.
pub fn to_plain(filled: &[Filled<'_>]) -> String {
    let mut out = String::new();
    for piece in filled {
        match piece {
            Filled::Template(text) | Filled::Value(text) => out.push_str(text),
            Filled::List(items) => out.push_str(&items.join("\n")),
            Filled::Unfilled(name) => {
                out.push_str("((");
                out.push_str(name);
                out.push_str("))");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    #[test]
    fn placeholders_and_conditionals_parse() {
        let t = TemplateText::parse("Hola ((first name)), ((paid??Gracias.)) ((bad!)) ((x");
        assert_eq!(
            t.segments(),
            [
                Segment::Text("Hola ".into()),
                Segment::Placeholder("first name".into()),
                Segment::Text(", ".into()),
                Segment::Conditional {
                    name: "paid".into(),
                    text: "Gracias.".into()
                },
                Segment::Text(" ((bad!)) ((x".into()),
            ]
        );
        assert_eq!(t.placeholders(), ["first name", "paid"]);
    }

    #[test]
    fn names_match_ignoring_case_and_spaces() {
        let t = TemplateText::parse("((First Name)) ((firstname))");
        assert_eq!(t.placeholders(), ["First Name"]);
        let values: Personalisation = [("FIRST NAME", text("Ana"))].into_iter().collect();
        let mut problems = Problems::default();
        let out = to_plain(&fill(t.segments(), &values, true, &mut problems));
        assert_eq!(out, "Ana Ana");
        assert!(problems.is_empty());
    }

    #[test]
    fn nested_parentheses_find_the_inner_placeholder() {
        let t = TemplateText::parse("(((a)))");
        let values: Personalisation = [("a", text("x"))].into_iter().collect();
        let mut problems = Problems::default();
        assert_eq!(
            to_plain(&fill(t.segments(), &values, true, &mut problems)),
            "(x)"
        );
    }

    #[test]
    fn conditionals_show_text_only_for_yes_true_or_1() {
        let t = TemplateText::parse("a((vip??, VIP))b");
        for (value, expected) in [
            ("yes", "a, VIPb"),
            ("TRUE", "a, VIPb"),
            ("1", "a, VIPb"),
            ("no", "ab"),
            ("", "ab"),
        ] {
            let values: Personalisation = [("vip", text(value))].into_iter().collect();
            let mut problems = Problems::default();
            assert_eq!(
                to_plain(&fill(t.segments(), &values, true, &mut problems)),
                expected,
                "{value}"
            );
        }
    }

    #[test]
    fn missing_and_misplaced_lists_are_reported_once_each() {
        let t = TemplateText::parse("((a)) ((b)) ((A)) ((c??x))");
        let values: Personalisation = [("b", Value::List(vec!["1".into()]))].into_iter().collect();
        let mut problems = Problems::default();
        let out = to_plain(&fill(t.segments(), &values, false, &mut problems));
        assert_eq!(problems.missing, ["a", "c"]);
        assert_eq!(problems.list_not_allowed, ["b"]);
        assert_eq!(out, "((a)) ((b)) ((A)) ");
    }

    /// Property: parsing never fails or panics, and without conditionals a
    /// preview with no values gives back exactly the input.
    #[test]
    fn any_text_parses_and_round_trips() {
        let mut rng = crate::domain::arbitrary::rng();
        for _ in 0..20_000 {
            let raw = crate::domain::arbitrary::text(&mut rng, 40);
            let parsed = TemplateText::parse(&raw);
            let mut problems = Problems::default();
            let out = to_plain(&fill(
                parsed.segments(),
                &Personalisation::new(),
                true,
                &mut problems,
            ));
            if !raw.contains("??") {
                assert_eq!(out, raw);
            }
            assert_eq!(problems.missing.len(), parsed.placeholders().len());
        }
    }
}
