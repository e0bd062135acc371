//! Path globs of egress rules.

use std::fmt;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// A set of path globs, e.g. `["/repos/**", "/user"]`.
///
/// Glob syntax is that of [`globset`] with `literal_separator` on: `*` and
/// `?` do not cross `/`, `**` does (`/repos/**` matches `/repos/a` and
/// `/repos/a/b`, but not `/repos` or `/reposx`); `[abc]` and `{a,b}` work as
/// usual, and `\` escapes. Every pattern starts with `/`.
///
/// Paths are matched as sent: percent-encoded and with dot segments already
/// resolved (see [`parse_target`](super::parse_target)). As a guard against
/// servers that decode `%2F` or `%5C` into path separators, a path containing
/// an encoded `/` or `\` never matches.
///
/// Two matchers are equal when their pattern texts are.
#[derive(Clone)]
pub struct PathMatcher {
    set: GlobSet,
    patterns: Vec<String>,
}

impl PathMatcher {
    /// Compiles a set of path globs.
    ///
    /// # Errors
    ///
    /// A human-readable message naming the first invalid pattern (see
    /// [`PathMatcher::check_pattern`]).
    pub fn new<I, S>(patterns: I) -> Result<PathMatcher, String>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let patterns: Vec<String> = patterns.into_iter().map(Into::into).collect();
        let mut builder = GlobSetBuilder::new();
        for pattern in &patterns {
            builder.add(compile(pattern)?);
        }
        let set = builder
            .build()
            .map_err(|error| format!("invalid path globs: {error}"))?;
        Ok(PathMatcher { set, patterns })
    }

    /// Checks a single path glob: it must start with `/` and compile.
    ///
    /// # Errors
    ///
    /// A human-readable description of the problem.
    pub fn check_pattern(pattern: &str) -> Result<(), String> {
        compile(pattern).map(drop)
    }

    /// Whether `path` matches at least one of the globs.
    pub fn is_match(&self, path: &str) -> bool {
        !has_encoded_separator(path) && self.set.is_match(path)
    }

    /// The pattern texts, in the order given.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }
}

impl PartialEq for PathMatcher {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl Eq for PathMatcher {}

impl fmt::Debug for PathMatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PathMatcher").field(&self.patterns).finish()
    }
}

fn compile(pattern: &str) -> Result<globset::Glob, String> {
    if !pattern.starts_with('/') {
        return Err(format!("path glob {pattern:?} must start with `/`"));
    }
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|error| format!("invalid path glob {pattern:?}: {}", error.kind()))
}

/// Whether `path` contains `%2F` or `%5C` (any case).
fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    })
}
