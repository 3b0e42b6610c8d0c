//! Page sizes and opaque page tokens for every List RPC.
//!
//! A token carries the keyset cursor of the last row returned and a
//! fingerprint of the filters, so it cannot be replayed with other filters.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub const DEFAULT_PAGE_SIZE: u32 = 50;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A validated page size: 1 to [`MAX_PAGE_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u32);

impl PageSize {
    /// `0` means the default.
    pub fn parse(raw: i32) -> Result<Self, String> {
        match u32::try_from(raw) {
            Ok(0) => Ok(Self(DEFAULT_PAGE_SIZE)),
            Ok(n) if n <= MAX_PAGE_SIZE => Ok(Self(n)),
            _ => Err(format!("must be between 0 and {MAX_PAGE_SIZE}")),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }

    /// One more than the page, to learn whether another page follows.
    pub fn fetch_limit(self) -> i64 {
        i64::from(self.0) + 1
    }
}

/// A page of results and the cursor of the next page, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// A page from rows fetched with [`PageSize::fetch_limit`] (one more
    /// than the page): when the extra row came, it is dropped and the last
    /// item's cursor says where the next page starts.
    pub fn from_overfetch(
        mut items: Vec<T>,
        size: PageSize,
        cursor: impl Fn(&T) -> String,
    ) -> Self {
        let limit = usize::try_from(size.get()).unwrap_or(usize::MAX);
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(cursor)
        } else {
            None
        };
        Self { items, next_cursor }
    }
}

/// Encodes a cursor and the filter fingerprint into an opaque token.
pub fn encode_page_token(cursor: &str, filters: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("1\n{filters}\n{cursor}"))
}

const INVALID: &str = "is not a page token from a previous call with the same filters";

/// The id in `token` for keyset paging by a server-assigned id with
/// `prefix`; `None` for the first page. Anything else is refused, so a
/// crafted token never reaches a query.
pub fn decode_id_cursor(
    token: &str,
    filters: &str,
    prefix: &str,
) -> Result<Option<String>, String> {
    match decode_page_token(token, filters)? {
        None => Ok(None),
        Some(cursor) => crate::ids::parse_id(prefix, &cursor)
            .map(Some)
            .map_err(|_| INVALID.to_owned()),
    }
}

/// The cursor in `token`, `None` for the first page (empty token).
pub fn decode_page_token(token: &str, filters: &str) -> Result<Option<String>, String> {
    if token.is_empty() {
        return Ok(None);
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| INVALID.to_owned())?;
    let text = String::from_utf8(bytes).map_err(|_| INVALID.to_owned())?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("1"), Some(f), Some(cursor)) if f == filters => Ok(Some(cursor.to_owned())),
        _ => Err(INVALID.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_bounds() {
        assert_eq!(PageSize::parse(0).unwrap().get(), DEFAULT_PAGE_SIZE);
        assert_eq!(PageSize::parse(1000).unwrap().get(), 1000);
        assert!(PageSize::parse(1001).is_err());
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn page_token_round_trips_only_with_same_filters() {
        let token = encode_page_token("123|cli_ab", "state=active");
        assert_eq!(
            decode_page_token(&token, "state=active")
                .unwrap()
                .as_deref(),
            Some("123|cli_ab")
        );
        assert!(decode_page_token(&token, "").is_err());
        assert!(decode_page_token("garbage!", "").is_err());
        assert_eq!(decode_page_token("", "x").unwrap(), None);
    }
}
