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
/// The most personalisation one rendering inserts (a value used many times
/// counts each time), so no request can make a rendering huge.
pub const MAX_INSERTED_BYTES: usize = 1024 * 1024;

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

    /// Adds a value; keys are normalised like placeholder names. Returns
    /// the value another key with the same normalised name had.
    pub fn insert(&mut self, name: &str, value: Value) -> Option<Value> {
        self.0.insert(normalise(name), value)
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

/// Whether `name` could name a placeholder.
pub fn is_placeholder_name(name: &str) -> bool {
    let count = name.chars().count();
    (1..=MAX_NAME_CHARS).contains(&count) && name.trim() == name && name.chars().all(is_name_char)
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, ' ' | '_' | '-')
}

/// The placeholder that starts right after a `((`, and how many bytes of
/// `after` it takes (through its `))`).
fn placeholder_at(after: &str) -> Option<(Segment, usize)> {
    let mut name_end = 0;
    for (count, (at, c)) in after.char_indices().enumerate() {
        if count == MAX_NAME_CHARS || !is_name_char(c) {
            break;
        }
        name_end = at + c.len_utf8();
    }
    let name = &after[..name_end];
    if name.is_empty() || name.trim() != name {
        return None;
    }
    let tail = &after[name_end..];
    if tail.starts_with("))") {
        return Some((Segment::Placeholder(name.to_owned()), name_end + 2));
    }
    let conditional = tail.strip_prefix("??")?;
    // The text runs to the first "))"; a "((" or a line break first means
    // this is no placeholder. Parentheses are one byte, so `i + 1` is a
    // character boundary.
    let mut from = 0;
    loop {
        let i = from + conditional[from..].find(['(', ')', '\n', '\r'])?;
        let here = &conditional[i..];
        if here.starts_with("))") {
            let segment = Segment::Conditional {
                name: name.to_owned(),
                text: conditional[..i].to_owned(),
            };
            return Some((segment, name_end + 2 + i + 2));
        }
        if here.starts_with("((") || here.starts_with(['\n', '\r']) {
            return None;
        }
        from = i + 1;
    }
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
    /// Parses in one pass: each `((` is examined over at most a name's
    /// length (and a conditional's text up to the next `((`, `))` or line
    /// break), so no input makes parsing slower than linear.
    pub fn parse(raw: &str) -> Self {
        let mut segments = Vec::new();
        let mut text = String::new();
        let mut rest = raw;
        while let Some(open) = rest.find("((") {
            let after = &rest[open + 2..];
            match placeholder_at(after) {
                Some((segment, consumed)) => {
                    text.push_str(&rest[..open]);
                    if !text.is_empty() {
                        segments.push(Segment::Text(std::mem::take(&mut text)));
                    }
                    segments.push(segment);
                    rest = &after[consumed..];
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
        let mut seen = std::collections::HashSet::new();
        self.0
            .iter()
            .filter_map(Segment::name)
            .filter(|name| seen.insert(normalise(name)))
            .map(str::to_owned)
            .collect()
    }
}

/// What personalisation could not provide.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems {
    /// Placeholders without a value, as written.
    pub missing: Vec<String>,
    /// Placeholders whose value is a list where only text is allowed.
    pub list_not_allowed: Vec<String>,
    /// Bytes of personalisation inserted so far.
    pub inserted_bytes: usize,
    /// The rendering would insert more than [`MAX_INSERTED_BYTES`]; it was
    /// cut short.
    pub too_large: bool,
    /// Normalised names already in `missing` and `list_not_allowed`.
    seen_missing: std::collections::HashSet<String>,
    seen_lists: std::collections::HashSet<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty() && self.list_not_allowed.is_empty() && !self.too_large
    }

    /// Counts `bytes` more of inserted personalisation; `false` once over
    /// the limit.
    fn spend(&mut self, bytes: usize) -> bool {
        self.inserted_bytes = self.inserted_bytes.saturating_add(bytes);
        if self.inserted_bytes > MAX_INSERTED_BYTES {
            self.too_large = true;
        }
        !self.too_large
    }

    fn missing(&mut self, name: &str) {
        if self.seen_missing.insert(normalise(name)) {
            self.missing.push(name.to_owned());
        }
    }

    fn list(&mut self, name: &str) {
        if self.seen_lists.insert(normalise(name)) {
            self.list_not_allowed.push(name.to_owned());
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
                // Over the size limit, placeholders stay unfilled.
                Some(Value::Text(value)) => out.push(if problems.spend(value.len()) {
                    Filled::Value(value)
                } else {
                    Filled::Unfilled(name)
                }),
                Some(Value::List(items)) if allow_lists => {
                    let bytes = items.iter().map(String::len).sum();
                    out.push(if problems.spend(bytes) {
                        Filled::List(items)
                    } else {
                        Filled::Unfilled(name)
                    });
                }
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

    #[test]
    fn conditionals_do_not_span_lines_and_adversarial_shapes_parse() {
        let t = TemplateText::parse("((vip??a\nb))");
        assert!(t.placeholders().is_empty());
        // Shapes that made a naive parser quadratic; each parses to text.
        for raw in [
            "(".repeat(100_000),
            "((".repeat(50_000),
            "((a??".repeat(20_000),
            "((((".repeat(25_000) + "))",
        ] {
            let t = TemplateText::parse(&raw);
            let mut problems = Problems::default();
            assert_eq!(
                to_plain(&fill(
                    t.segments(),
                    &Personalisation::new(),
                    true,
                    &mut problems
                )),
                raw
            );
        }
    }

    #[test]
    fn renderings_stop_growing_at_the_size_limit() {
        let t = TemplateText::parse(&"((x))".repeat(20));
        let values: Personalisation = [("x", text(&"v".repeat(100_000)))].into_iter().collect();
        let mut problems = Problems::default();
        let out = to_plain(&fill(t.segments(), &values, true, &mut problems));
        assert!(problems.too_large);
        assert!(out.len() <= MAX_INSERTED_BYTES + 20 * 5);
    }
}
