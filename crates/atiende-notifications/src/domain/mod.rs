//! The notifications domain: plain Rust, no gRPC, no SQL.
//!
//! - [`template`]: template syntax (`((name))`, `((name??text))`), parsing,
//!   placeholders, personalisation.
//! - [`email`]: the Markdown subset of email bodies, rendered to plain text
//!   and HTML with every personalisation value escaped.
//! - [`sms`]: GSM-7 / UCS-2 detection, character and fragment counts.
//! - [`templates`]: stored templates, their validation and rendering.
//! - [`notifications`]: statuses, recipients, the sandbox simulator.

pub mod email;
pub mod notifications;
pub mod sms;
pub mod template;
pub mod templates;

/// Seeded random inputs for the property tests of the template modules.
#[cfg(test)]
pub(crate) mod arbitrary {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Characters that stress the parsers: markers, markup, white space,
    /// non-ASCII letters, an emoji.
    const ALPHABET: &[&str] = &[
        "(", ")", "((", "))", "??", "?", "#", "# ", "* ", "- ", "1. ", "^ ", "---", "\n", "\r",
        " ", "a", "Z", "ñ", "é", "á", "€", "🙂", "<", ">", "&", "\"", "'", "https://", "x.cl", "_",
        "-", "name", "\u{0}",
    ];

    pub fn rng() -> StdRng {
        StdRng::seed_from_u64(0x00A7_1EDE)
    }

    pub fn text(rng: &mut StdRng, max_pieces: usize) -> String {
        let pieces = rng.random_range(0..=max_pieces);
        (0..pieces)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
            .collect()
    }
}
