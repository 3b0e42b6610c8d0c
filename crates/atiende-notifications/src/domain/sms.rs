//! How an SMS is encoded and billed.
//!
//! A message whose every character is in the GSM 03.38 default alphabet
//! (with its extension table) is sent as GSM-7: 160 septets in a single SMS,
//! 153 per part of a concatenated one, extension characters taking two.
//! Anything else is sent as UCS-2: 70 UTF-16 units in a single SMS, 67 per
//! part. Note that `á í ó ú` are not GSM-7 (`é` is): one of them makes a
//! Spanish message UCS-2.

/// The longest SMS Atiende sends, in characters as counted on the wire.
pub const MAX_SMS_CHARACTERS: u32 = 918;

const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?\
¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
const GSM7_EXTENSION: &str = "\u{c}^{}\\[~]|€";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

/// What a message costs on the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsSize {
    pub encoding: Encoding,
    /// Septets (GSM-7) or UTF-16 units (UCS-2).
    pub characters: u32,
    /// Billed parts.
    pub fragments: u32,
}

impl SmsSize {
    pub fn of(text: &str) -> Self {
        let gsm: Option<u32> = text.chars().try_fold(0u32, |n, c| {
            if GSM7_BASIC.contains(c) {
                Some(n.saturating_add(1))
            } else if GSM7_EXTENSION.contains(c) {
                Some(n.saturating_add(2))
            } else {
                None
            }
        });
        let (encoding, characters, single, part) = match gsm {
            Some(n) => (Encoding::Gsm7, n, 160, 153),
            None => {
                let units = u32::try_from(text.encode_utf16().count()).unwrap_or(u32::MAX);
                (Encoding::Ucs2, units, 70, 67)
            }
        };
        let fragments = if characters <= single {
            1
        } else {
            characters.div_ceil(part)
        };
        Self {
            encoding,
            characters,
            fragments,
        }
    }

    pub fn is_too_long(self) -> bool {
        self.characters > MAX_SMS_CHARACTERS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_counts_and_fragments() {
        let size = SmsSize::of(&"a".repeat(160));
        assert_eq!(
            (size.encoding, size.characters, size.fragments),
            (Encoding::Gsm7, 160, 1)
        );
        assert_eq!(SmsSize::of(&"a".repeat(161)).fragments, 2);
        assert_eq!(SmsSize::of(&"a".repeat(306)).fragments, 2);
        assert_eq!(SmsSize::of(&"a".repeat(307)).fragments, 3);
        // Extension characters count twice.
        assert_eq!(SmsSize::of("€[]").characters, 6);
        assert_eq!(
            SmsSize::of("¿Qué tal? Ñandú").encoding,
            Encoding::Ucs2,
            "ú is not GSM-7"
        );
        assert_eq!(SmsSize::of("¿Qué tal? Ñandu").encoding, Encoding::Gsm7);
    }

    #[test]
    fn ucs2_counts_utf16_units() {
        let size = SmsSize::of(&"á".repeat(70));
        assert_eq!(
            (size.encoding, size.characters, size.fragments),
            (Encoding::Ucs2, 70, 1)
        );
        assert_eq!(SmsSize::of(&"á".repeat(71)).fragments, 2);
        assert_eq!(SmsSize::of(&"á".repeat(134)).fragments, 2);
        assert_eq!(SmsSize::of(&"á".repeat(135)).fragments, 3);
        // An emoji outside the BMP is two UTF-16 units.
        assert_eq!(SmsSize::of("🙂").characters, 2);
    }

    #[test]
    fn the_limit_is_918_characters() {
        assert!(!SmsSize::of(&"a".repeat(918)).is_too_long());
        assert!(SmsSize::of(&"a".repeat(919)).is_too_long());
        assert_eq!(SmsSize::of(&"a".repeat(918)).fragments, 6);
    }
}
