//! Server-assigned ids: a short type prefix, `_`, and a UUIDv7 as 32 hex
//! digits (`agy_0190c6...`). The prefix tells a human what an id names, and
//! time-ordered UUIDs keep indexes compact.

/// A fresh id with the given prefix.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Checks that `raw` is an id with `prefix`; the error describes the format
/// without echoing the input.
pub fn parse_id(prefix: &str, raw: &str) -> Result<String, String> {
    let valid = raw
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| {
            hex.len() == 32
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
    if valid {
        Ok(raw.to_owned())
    } else if raw.is_empty() {
        Err("is required".to_owned())
    } else {
        Err(format!(
            "must be an id of the form {prefix}_ followed by 32 hex digits"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_shapes() {
        let id = new_id("cli");
        assert_eq!(parse_id("cli", &id).unwrap(), id);
        assert!(parse_id("agy", &id).is_err());
        assert!(parse_id("cli", "cli_XYZ").is_err());
        assert!(parse_id("cli", "").is_err());
        assert!(parse_id("cli", &format!("{id}0")).is_err());
    }
}
