//! HTML escaping for the server-rendered pages and emails of every
//! service: text for element content and double-quoted attributes.

/// Appends `text` to `html`, escaped.
pub fn escape_into(html: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => html.push_str("&amp;"),
            '<' => html.push_str("&lt;"),
            '>' => html.push_str("&gt;"),
            '"' => html.push_str("&quot;"),
            '\'' => html.push_str("&#39;"),
            other => html.push(other),
        }
    }
}

/// `text`, escaped.
pub fn escape(text: &str) -> String {
    let mut html = String::with_capacity(text.len());
    escape_into(&mut html, text);
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_and_quotes_are_escaped_and_other_text_kept() {
        assert_eq!(
            escape(r#"<a href="x" title='y'>Pérez & hijos</a>"#),
            "&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;Pérez &amp; hijos&lt;/a&gt;"
        );
    }
}
