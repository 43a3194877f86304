//! Group keys: which episode and which counter an event belongs to under a rule.
//!
//! Invariants (`docs/ALERTING.md`, "Group key"):
//! - the values are the `group_by` fields in order, [`NONE`] where the event lacks one,
//!   each cut at [`MAX_VALUE_BYTES`] bytes on a character boundary
//! - `values_json` is the compact JSON array of the values (`["api","eu"]`, `[]` without
//!   `group_by`); the id is FNV-1a 64 over those bytes, as 16 lowercase hex digits
//! - hashing streams the JSON through the hasher: an event that matches no new group key
//!   allocates nothing

use std::io::Write;

use super::field::{EventFields, Field};
use super::plan::GroupKey;

/// The value of a `group_by` field the event does not have.
pub const NONE: &str = "<none>";
/// Longest group value kept, in bytes: a key built from a huge field would make every
/// counter key in Redis as large.
pub const MAX_VALUE_BYTES: usize = 256;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a 64 of everything written to it.
struct FnvWriter(u64);

impl Write for FnvWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(FNV_PRIME);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `value` cut to at most [`MAX_VALUE_BYTES`] bytes, on a character boundary.
pub fn cut(value: &str) -> &str {
    if value.len() <= MAX_VALUE_BYTES {
        return value;
    }
    let mut end = MAX_VALUE_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// The group value of `field` in `event`, cut.
pub fn value_of<'event, E: EventFields>(field: &Field, event: &'event E) -> &'event str {
    cut(event.value(field).unwrap_or(NONE))
}

/// Writes the JSON array of `values` to `out` exactly as `serde_json::to_string` of a
/// `Vec<&str>` would.
fn write_json_array<'value>(out: &mut impl Write, values: impl Iterator<Item = &'value str>) {
    // Writing into a hasher or a Vec cannot fail.
    let _ = out.write_all(b"[");
    for (index, value) in values.enumerate() {
        if index > 0 {
            let _ = out.write_all(b",");
        }
        let _ = serde_json::to_writer(&mut *out, value);
    }
    let _ = out.write_all(b"]");
}

/// FNV-1a 64 of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hasher = FnvWriter(FNV_OFFSET);
    let _ = hasher.write_all(bytes);
    hasher.0
}

/// FNV-1a 64 of the JSON array of `values`, without allocating.
pub fn hash_of<'value>(values: impl Iterator<Item = &'value str>) -> u64 {
    let mut hasher = FnvWriter(FNV_OFFSET);
    write_json_array(&mut hasher, values);
    hasher.0
}

/// The group key of `values` (already cut).
pub fn key_of<'value>(values: impl Iterator<Item = &'value str> + Clone) -> GroupKey {
    let mut json = Vec::new();
    write_json_array(&mut json, values);
    let hash = {
        let mut hasher = FnvWriter(FNV_OFFSET);
        let _ = hasher.write_all(&json);
        hasher.0
    };
    GroupKey {
        id: format!("{hash:016x}"),
        values_json: String::from_utf8(json).expect("JSON text of strings is UTF-8"),
    }
}

/// The values of a group key (the inverse of [`key_of`]); `None` if `values_json` is not
/// a JSON array of strings.
pub fn values_of(group: &GroupKey) -> Option<Vec<String>> {
    serde_json::from_str(&group.values_json).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_fnv_of_the_json_array() {
        let key = key_of(["api", "eu"].into_iter());
        assert_eq!(key.values_json, r#"["api","eu"]"#);
        assert_eq!(key.values_json, serde_json::to_string(&["api", "eu"]).unwrap());
        assert_eq!(key.id.len(), 16);
        assert_eq!(key.id, format!("{:016x}", hash_of(["api", "eu"].into_iter())));
        // FNV-1a 64 of "[]", computed by hand from the definition.
        let empty = key_of(std::iter::empty());
        let expected = b"[]".iter().fold(FNV_OFFSET, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(FNV_PRIME)
        });
        assert_eq!(empty.id, format!("{expected:016x}"));
        assert_eq!(values_of(&key).unwrap(), vec!["api", "eu"]);
    }

    #[test]
    fn values_needing_escapes_hash_as_their_json() {
        let values = ["quote\" and \\ and \n and \u{1}", "caf\u{e9}"];
        let key = key_of(values.into_iter());
        assert_eq!(key.values_json, serde_json::to_string(&values).unwrap());
        assert_eq!(values_of(&key).unwrap(), values);
    }

    proptest::proptest! {
        /// The streamed hash is the hash of serde_json's text, for any values.
        #[test]
        fn streamed_hash_equals_the_hash_of_the_json_text(values in proptest::collection::vec(".{0,40}", 0..4)) {
            let json = serde_json::to_string(&values).unwrap();
            let expected = json.bytes().fold(FNV_OFFSET, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(FNV_PRIME));
            proptest::prop_assert_eq!(hash_of(values.iter().map(String::as_str)), expected);
            let key = key_of(values.iter().map(String::as_str));
            proptest::prop_assert_eq!(key.values_json, json);
            proptest::prop_assert_eq!(key.id, format!("{expected:016x}"));
        }
    }

    #[test]
    fn long_values_are_cut_on_a_character_boundary() {
        let long = "\u{e9}".repeat(200); // 400 bytes
        let cut_value = cut(&long);
        assert!(cut_value.len() <= MAX_VALUE_BYTES);
        assert_eq!(cut_value.len(), 256);
        let odd = format!("a{long}");
        assert_eq!(cut(&odd).len(), 255);
        assert_eq!(cut("short"), "short");
    }
}
