//! How an error message shows a value it refuses: quoted, and at most a
//! short prefix of it. A caller may send a 200,000-character name; the
//! message that refuses it must still fit in a status header (common gRPC
//! clients refuse metadata over 16 KiB) and in a log line. Every error that
//! carries user input holds a [`Shown`] rather than the input itself.

use std::fmt;

/// How many bytes of a refused value an error message shows.
pub const SHOWN_PREFIX_BYTES: usize = 64;

/// A refused value as error messages show it: its first
/// [`SHOWN_PREFIX_BYTES`] (cut at a character boundary), quoted, and its
/// full length if that was cut: `"aaaa…"… (200000 bytes)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    prefix: String,
    len: usize,
}

impl Shown {
    pub fn new(value: &str) -> Self {
        Self {
            prefix: prefix_at_most(value, SHOWN_PREFIX_BYTES).to_owned(),
            len: value.len(),
        }
    }

    /// Whether the value was cut.
    pub fn is_cut(&self) -> bool {
        self.prefix.len() < self.len
    }
}

/// `value` as an error message shows it (see [`Shown`]).
pub fn shown(value: &str) -> Shown {
    Shown::new(value)
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.prefix)?;
        if self.is_cut() {
            write!(f, "… ({} bytes)", self.len)?;
        }
        Ok(())
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a
/// character boundary.
pub fn prefix_at_most(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    &s[..cut]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shown_quoted_and_cut_after_a_short_prefix() {
        let a64 = "a".repeat(64);
        let a65 = "a".repeat(65);
        // 'é' is two bytes: 63 'a's and an 'é' straddle byte 64.
        let straddle = format!("{}é", "a".repeat(63));
        let big = "x".repeat(200_000);
        let cases: [(&str, String); 7] = [
            ("", r#""""#.to_owned()),
            ("site-a", r#""site-a""#.to_owned()),
            ("a\"b\n", r#""a\"b\n""#.to_owned()),
            (&a64, format!("{a64:?}")),
            (&a65, format!("{a64:?}… (65 bytes)")),
            (&straddle, format!("{:?}… (65 bytes)", "a".repeat(63))),
            (&big, format!("{:?}… (200000 bytes)", "x".repeat(64))),
        ];
        for (value, want) in cases {
            assert_eq!(shown(value).to_string(), want, "{:.80}", value);
        }
    }

    #[test]
    fn a_prefix_ends_at_a_character_boundary() {
        let cases = [
            ("", 4, ""),
            ("abc", 4, "abc"),
            ("abcd", 4, "abcd"),
            ("abcde", 4, "abcd"),
            ("abcé", 4, "abc"),
            ("日本語", 4, "日"),
            ("日本語", 2, ""),
            ("日本語", 6, "日本"),
        ];
        for (s, max, want) in cases {
            assert_eq!(prefix_at_most(s, max), want, "{s:?} to {max}");
        }
    }

    #[test]
    fn only_a_cut_value_reports_its_length() {
        assert!(!shown(&"a".repeat(SHOWN_PREFIX_BYTES)).is_cut());
        assert!(shown(&"a".repeat(SHOWN_PREFIX_BYTES + 1)).is_cut());
    }
}
