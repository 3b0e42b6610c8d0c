//! Email bodies: a small Markdown subset, rendered to a plain-text part and
//! an HTML part.
//!
//! The block structure comes from the template alone: a line of the
//! template that starts with `# ` is a heading, `* ` or `- ` a bullet, `1. `
//! a numbered item, `^ ` inset text, `---` a rule; other lines are
//! paragraphs (blank lines separate them). Bare `https://` links written in
//! the template become links. Personalisation values are text, always: in
//! HTML they are escaped and never linked, so a value cannot add markup,
//! links or structure. A list value alone on its line becomes a bulleted
//! list; inside a sentence its items are joined with commas.

use atiende_platform::html::escape_into;

use super::template::{Filled, Personalisation, Problems, TemplateText, fill, to_plain};

/// A rendered email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedEmail {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Blank,
    Paragraph,
    Heading,
    Bullet,
    Numbered,
    Inset,
    Rule,
}

/// Classifies a template line and returns the text after its marker.
fn classify(line: &str) -> (Kind, &str) {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return (Kind::Blank, "");
    }
    if trimmed.len() >= 3 && trimmed.bytes().all(|b| b == b'-') {
        return (Kind::Rule, "");
    }
    if let Some(rest) = trimmed.strip_prefix("# ") {
        return (Kind::Heading, rest);
    }
    if let Some(rest) = trimmed
        .strip_prefix("* ")
        .or_else(|| trimmed.strip_prefix("- "))
    {
        return (Kind::Bullet, rest);
    }
    if let Some(rest) = trimmed.strip_prefix("^ ") {
        return (Kind::Inset, rest);
    }
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0
        && let Some(rest) = trimmed[digits..].strip_prefix(". ")
    {
        return (Kind::Numbered, rest);
    }
    (Kind::Paragraph, line.trim_end())
}

/// One line of the body, filled.
struct Line<'a> {
    kind: Kind,
    pieces: Vec<Filled<'a>>,
}

impl Line<'_> {
    /// A list value standing alone on a paragraph line becomes a list block.
    fn list_alone(&self) -> Option<&[String]> {
        let mut meaningful = self
            .pieces
            .iter()
            .filter(|p| !matches!(p, Filled::Template(t) if t.trim().is_empty()));
        match (meaningful.next(), meaningful.next()) {
            (Some(Filled::List(items)), None) if self.kind == Kind::Paragraph => Some(items),
            _ => None,
        }
    }
}

/// Renders subject and body. `problems` collects what personalisation
/// lacked; lists are not allowed in the subject.
pub fn render(
    subject: &str,
    body: &str,
    values: &Personalisation,
    problems: &mut Problems,
) -> RenderedEmail {
    let subject_text = TemplateText::parse(subject);
    let subject = to_plain(&fill(subject_text.segments(), values, false, problems))
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>();

    let parsed: Vec<(Kind, TemplateText)> = body
        .split('\n')
        .map(|line| {
            let (kind, rest) = classify(line.trim_end_matches('\r'));
            (kind, TemplateText::parse(rest))
        })
        .collect();
    let lines: Vec<Line<'_>> = parsed
        .iter()
        .map(|(kind, text)| Line {
            kind: *kind,
            pieces: fill(text.segments(), values, true, problems),
        })
        .collect();

    let mut text = String::new();
    let mut html = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let block_start = i;
        if let Some(items) = line.list_alone() {
            push_block(
                &mut text,
                &items
                    .iter()
                    .map(|item| format!("• {item}"))
                    .collect::<Vec<_>>()
                    .join("\n"),
            );
            html.push_str("<ul>");
            for item in items {
                html.push_str("<li>");
                escape_into(&mut html, item);
                html.push_str("</li>");
            }
            html.push_str("</ul>\n");
            i += 1;
            continue;
        }
        // Consecutive lines of one kind form one block.
        while i < lines.len() && lines[i].kind == line.kind && lines[i].list_alone().is_none() {
            i += 1;
            if matches!(line.kind, Kind::Heading | Kind::Rule | Kind::Blank) {
                break;
            }
        }
        let block = &lines[block_start..i];
        match line.kind {
            Kind::Blank => {}
            Kind::Rule => {
                push_block(&mut text, "---");
                html.push_str("<hr>\n");
            }
            Kind::Heading => {
                push_block(&mut text, &plain(&block[0].pieces));
                html.push_str("<h2>");
                html_pieces(&mut html, &block[0].pieces);
                html.push_str("</h2>\n");
            }
            Kind::Paragraph | Kind::Inset => {
                let joined: Vec<String> = block.iter().map(|l| plain(&l.pieces)).collect();
                push_block(&mut text, &joined.join("\n"));
                html.push_str(if line.kind == Kind::Inset {
                    "<blockquote><p>"
                } else {
                    "<p>"
                });
                for (n, l) in block.iter().enumerate() {
                    if n > 0 {
                        html.push_str("<br>\n");
                    }
                    html_pieces(&mut html, &l.pieces);
                }
                html.push_str(if line.kind == Kind::Inset {
                    "</p></blockquote>\n"
                } else {
                    "</p>\n"
                });
            }
            Kind::Bullet | Kind::Numbered => {
                let numbered = line.kind == Kind::Numbered;
                let items: Vec<String> = block
                    .iter()
                    .enumerate()
                    .map(|(n, l)| {
                        let marker = if numbered {
                            format!("{}.", n + 1)
                        } else {
                            "•".to_owned()
                        };
                        format!("{marker} {}", plain(&l.pieces))
                    })
                    .collect();
                push_block(&mut text, &items.join("\n"));
                html.push_str(if numbered { "<ol>" } else { "<ul>" });
                for l in block {
                    html.push_str("<li>");
                    html_pieces(&mut html, &l.pieces);
                    html.push_str("</li>");
                }
                html.push_str(if numbered { "</ol>\n" } else { "</ul>\n" });
            }
        }
    }

    let mut document = String::with_capacity(html.len() + 400);
    document.push_str("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\"><title>");
    escape_into(&mut document, &subject);
    document.push_str("</title></head>\n<body style=\"font-family: Arial, sans-serif; font-size: 16px; line-height: 1.5; color: #0b0c0c; max-width: 580px; margin: 0 auto; padding: 16px;\">\n");
    document.push_str(&html);
    document.push_str("</body></html>\n");
    RenderedEmail {
        subject,
        text,
        html: document,
    }
}

fn push_block(text: &mut String, block: &str) {
    if !text.is_empty() {
        text.push_str("\n\n");
    }
    text.push_str(block);
}

/// Plain text of one line: inline lists joined with commas.
fn plain(pieces: &[Filled<'_>]) -> String {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Filled::Template(t) | Filled::Value(t) => out.push_str(t),
            Filled::List(items) => out.push_str(&items.join(", ")),
            Filled::Unfilled(name) => {
                out.push_str("((");
                out.push_str(name);
                out.push_str("))");
            }
        }
    }
    out
}

fn html_pieces(html: &mut String, pieces: &[Filled<'_>]) {
    for piece in pieces {
        match piece {
            Filled::Template(t) => linkify_into(html, t),
            Filled::Value(v) => escape_into(html, v),
            Filled::List(items) => escape_into(html, &items.join(", ")),
            Filled::Unfilled(name) => {
                escape_into(html, "((");
                escape_into(html, name);
                escape_into(html, "))");
            }
        }
    }
}

/// Escapes template text, turning bare `https://` URLs into links.
fn linkify_into(html: &mut String, text: &str) {
    let mut rest = text;
    while let Some(start) = rest.find("https://") {
        escape_into(html, &rest[..start]);
        let candidate = &rest[start..];
        let end = candidate
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(candidate.len());
        let url = candidate[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')']);
        if url.len() <= "https://".len() {
            escape_into(html, "https://");
            rest = &candidate["https://".len()..];
            continue;
        }
        html.push_str("<a href=\"");
        escape_into(html, url);
        html.push_str("\">");
        escape_into(html, url);
        html.push_str("</a>");
        rest = &candidate[url.len()..];
    }
    escape_into(html, rest);
}

#[cfg(test)]
mod tests {
    use rand::Rng as _;

    use super::super::template::Value;
    use super::*;

    fn values(pairs: &[(&str, Value)]) -> Personalisation {
        pairs.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    const BODY: &str = "# Permiso de circulación\n\nHola ((name)),\nsu pago de ((amount)) fue recibido.\n\n* patente ((plate))\n* año 2026\n\n((documents))\n\n^ Guarde este correo.\n\n---\nVea https://www.example.gob.cl/pagos.";

    #[test]
    fn markdown_subset_renders_to_text_and_html() {
        let v = values(&[
            ("name", text("Ana")),
            ("amount", text("$12.000")),
            ("plate", text("AB-CD-12")),
            (
                "documents",
                Value::List(vec!["Padrón".into(), "SOAP".into()]),
            ),
        ]);
        let mut problems = Problems::default();
        let email = render("Pago de ((name))", BODY, &v, &mut problems);
        assert!(problems.is_empty());
        assert_eq!(email.subject, "Pago de Ana");
        assert_eq!(
            email.text,
            "Permiso de circulación\n\nHola Ana,\nsu pago de $12.000 fue recibido.\n\n• patente AB-CD-12\n• año 2026\n\n• Padrón\n• SOAP\n\nGuarde este correo.\n\n---\n\nVea https://www.example.gob.cl/pagos."
        );
        for fragment in [
            "<h2>Permiso de circulación</h2>",
            "<p>Hola Ana,<br>\nsu pago de $12.000 fue recibido.</p>",
            "<ul><li>patente AB-CD-12</li><li>año 2026</li></ul>",
            "<ul><li>Padrón</li><li>SOAP</li></ul>",
            "<blockquote><p>Guarde este correo.</p></blockquote>",
            "<hr>",
            "<a href=\"https://www.example.gob.cl/pagos\">https://www.example.gob.cl/pagos</a>.",
        ] {
            assert!(
                email.html.contains(fragment),
                "{fragment} in\n{}",
                email.html
            );
        }
    }

    #[test]
    fn personalisation_cannot_inject_html_links_or_structure() {
        let evil = "<script>alert(1)</script> <a href=\"https://evil.example\">x</a> https://evil.example\n# heading\n* bullet";
        let v = values(&[("name", text(evil))]);
        let mut problems = Problems::default();
        let email = render("((name))", "Hola ((name))", &v, &mut problems);
        assert!(!email.html.contains("<script"));
        assert!(!email.html.contains("<a "));
        assert!(!email.html.contains("<h2>"));
        assert!(!email.html.contains("<li>"));
        assert!(email.html.contains("&lt;script&gt;"));
        assert!(!email.subject.contains('\n'), "no header injection");
    }

    #[test]
    fn numbered_lists_are_renumbered_and_missing_values_reported() {
        let mut problems = Problems::default();
        let email = render(
            "Asunto",
            "3. uno\n7. ((dos))",
            &Personalisation::new(),
            &mut problems,
        );
        assert_eq!(email.text, "1. uno\n2. ((dos))");
        assert!(email.html.contains("<ol><li>uno</li><li>((dos))</li></ol>"));
        assert_eq!(problems.missing, ["dos"]);
    }

    #[test]
    fn lists_are_refused_in_the_subject() {
        let v = values(&[("x", Value::List(vec!["a".into()]))]);
        let mut problems = Problems::default();
        render("((x))", "body", &v, &mut problems);
        assert_eq!(problems.list_not_allowed, ["x"]);
    }

    /// Property: whatever the template and the values, rendering does not
    /// panic, and every `<` in the HTML starts a tag the renderer writes:
    /// values (full of markup characters here) only ever appear escaped.
    #[test]
    fn any_template_and_values_render_without_foreign_markup() {
        const OURS: &[&str] = &[
            "<!DOCTYPE html>",
            "<html>",
            "</html>",
            "<head>",
            "</head>",
            "<meta ",
            "<title>",
            "</title>",
            "<body ",
            "</body>",
            "<p>",
            "</p>",
            "<br>",
            "<h2>",
            "</h2>",
            "<ul>",
            "</ul>",
            "<ol>",
            "</ol>",
            "<li>",
            "</li>",
            "<blockquote>",
            "</blockquote>",
            "<hr>",
            "<a href=\"https://",
            "</a>",
        ];
        let mut rng = crate::domain::arbitrary::rng();
        for _ in 0..5_000 {
            let subject = crate::domain::arbitrary::text(&mut rng, 8);
            let body = crate::domain::arbitrary::text(&mut rng, 60);
            let template = TemplateText::parse(&format!("{subject}\n{body}"));
            let mut v = Personalisation::new();
            for name in template.placeholders() {
                let value = crate::domain::arbitrary::text(&mut rng, 10);
                if rng.random_bool(0.2) {
                    v.insert(&name, Value::List(vec![value.clone(), value]));
                } else {
                    v.insert(&name, Value::Text(value));
                }
            }
            let mut problems = Problems::default();
            let email = render(&subject, &body, &v, &mut problems);
            for (at, _) in email.html.match_indices('<') {
                let rest = &email.html[at..];
                assert!(
                    OURS.iter().any(|tag| rest.starts_with(tag)),
                    "foreign markup at {rest:.40}"
                );
            }
            assert!(!email.subject.chars().any(char::is_control));
            // What a template says it needs is what a render without
            // values reports missing.
            let mut none = Problems::default();
            render(&subject, &body, &Personalisation::new(), &mut none);
            let mut listed = template.placeholders();
            let mut missing = none.missing.clone();
            listed.sort();
            missing.sort();
            assert_eq!(listed, missing, "{subject:?} {body:?}");
            // Links come only from the template's own https:// text.
            assert!(email.html.matches("<a href").count() <= body.matches("https://").count());
        }
    }
}
