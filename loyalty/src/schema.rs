//! Pieces of the API's JSON Schema that the types crossing it share: the rules on text. The
//! document spells a `\S` pattern (not blank) out as [`NOT_BLANK`], and gives every other text
//! without a pattern [`NO_NUL`].

/// Any text without U+0000, which PostgreSQL cannot store.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// Text that is not blank (Unicode white space only, as `str::trim` sees it) and holds no U+0000.
pub const NOT_BLANK: &str = "^[^\\u0000]*[^\\u0000\\t-\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000]*$";
