//! The secret matcher: one Aho-Corasick automaton over every form of every secret injected into
//! one request, used to scrub the response the Worker gets and to check redirect targets.
//!
//! Forms, each for the whole secret (secrets shorter than [`WINDOW`]) or for every window of
//! [`WINDOW`] consecutive bytes of it (so truncated echoes, range reads and a secret split in
//! two are caught too): raw; `application/x-www-form-urlencoded` (the query form the gateway
//! sends); percent-encoding of every non-alphanumeric byte, of every non-unreserved byte and of
//! every byte, and the double-encoded form; JSON string escapes (minimal, with `\/`, every byte
//! as `\u00xx`); base64 standard and URL-safe at the three byte alignments (the characters that
//! depend on the secret only, so with or without padding and inside a longer base64 stream);
//! hex; HTML numeric entities (decimal and hex); UTF-16LE/BE. Matching is ASCII
//! case-insensitive, which also covers upper/lower-case hex and percent-escapes.
//!
//! What it cannot catch: an upstream that transforms the secret in a way not listed (reversed,
//! re-encrypted) or slices it into pieces shorter than [`WINDOW`] bytes. Credentials should be
//! bound only to hosts trusted not to reflect them.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

/// What replaces a match.
pub const REDACTED: &str = "[REDACTED]";
/// Windows of this many consecutive secret bytes are scrubbed on their own.
pub const WINDOW: usize = 8;
/// Secrets shorter than this are not scrubbed (they would redact ordinary text); they are still
/// never logged.
pub const MIN_SECRET: usize = 4;

/// Everything except RFC 3986 unreserved characters.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A half-open byte range of a match.
pub type Span = (usize, usize);

/// The matcher for one set of secrets. Holds secret material: never printed (no `Debug`).
pub struct Scrubber {
    automaton: Option<AhoCorasick>,
    /// Credential index of each pattern.
    owner: Vec<usize>,
    /// Credential names, by index.
    names: Vec<String>,
}

fn hex_lower(bytes: &[u8]) -> Vec<u8> {
    hex::encode(bytes).into_bytes()
}

fn percent_all(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 3);
    for b in bytes {
        out.extend_from_slice(format!("%{b:02X}").as_bytes());
    }
    out
}

fn json_minimal(bytes: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(bytes).ok()?;
    let quoted = serde_json::to_string(s).ok()?;
    Some(quoted.as_bytes()[1..quoted.len() - 1].to_vec())
}

fn json_all(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() * 6);
    for b in bytes {
        out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
    }
    out
}

fn html_dec(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bytes {
        out.extend_from_slice(format!("&#{b};").as_bytes());
    }
    out
}

fn html_hex(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for b in bytes {
        out.extend_from_slice(format!("&#x{b:x};").as_bytes());
    }
    out
}

fn utf16(bytes: &[u8], little: bool) -> Vec<u8> {
    let units: Vec<u16> = match std::str::from_utf8(bytes) {
        Ok(s) => s.encode_utf16().collect(),
        Err(_) => bytes.iter().map(|b| u16::from(*b)).collect(),
    };
    let mut out = Vec::with_capacity(units.len() * 2);
    for u in units {
        out.extend_from_slice(&if little {
            u.to_le_bytes()
        } else {
            u.to_be_bytes()
        });
    }
    out
}

/// The base64 characters that depend only on `bytes` when they start at byte offset `align`
/// (mod 3) of a longer stream.
fn base64_core(bytes: &[u8], align: usize, engine: &base64::engine::GeneralPurpose) -> Vec<u8> {
    let mut buf = vec![0u8; align];
    buf.extend_from_slice(bytes);
    let encoded = engine.encode(&buf).into_bytes();
    let first = (8 * align).div_ceil(6);
    let last = (8 * (align + bytes.len())) / 6;
    if first >= last || last > encoded.len() {
        return Vec::new();
    }
    encoded[first..last].to_vec()
}

/// Every encoded form of one piece (a window, or a short secret whole).
fn forms(piece: &[u8]) -> Vec<Vec<u8>> {
    let mut out = vec![piece.to_vec()];
    let form: String = url::form_urlencoded::byte_serialize(piece).collect();
    out.push(form.clone().into_bytes());
    out.push(form.replace('%', "%25").into_bytes());
    out.push(
        percent_encode(piece, NON_ALPHANUMERIC)
            .to_string()
            .into_bytes(),
    );
    let component = percent_encode(piece, COMPONENT).to_string();
    out.push(component.replace('%', "%25").into_bytes());
    out.push(component.into_bytes());
    out.push(percent_all(piece));
    if let Some(json) = json_minimal(piece) {
        let slashed = String::from_utf8_lossy(&json).replace('/', "\\/");
        out.push(json);
        out.push(slashed.into_bytes());
    }
    out.push(json_all(piece));
    for engine in [
        &base64::engine::general_purpose::STANDARD,
        &base64::engine::general_purpose::URL_SAFE,
    ] {
        for align in 0..3 {
            let core = base64_core(piece, align, engine);
            if core.len() >= 4 {
                let slashed = String::from_utf8_lossy(&core).replace('/', "\\/");
                out.push(core);
                out.push(slashed.into_bytes());
            }
        }
    }
    out.push(hex_lower(piece));
    out.push(html_dec(piece));
    out.push(html_hex(piece));
    out.push(utf16(piece, true));
    out.push(utf16(piece, false));
    out
}

impl Scrubber {
    /// A matcher over every form of every secret in `secrets` (credential name, value).
    pub fn new(secrets: &[(String, SecretString)]) -> Scrubber {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut owner = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut names = Vec::new();
        for (index, (name, value)) in secrets.iter().enumerate() {
            names.push(name.clone());
            let secret = value.expose_secret().as_bytes();
            if secret.len() < MIN_SECRET {
                continue;
            }
            let pieces: Vec<&[u8]> = if secret.len() <= WINDOW {
                vec![secret]
            } else {
                secret.windows(WINDOW).collect()
            };
            for piece in pieces {
                for form in forms(piece) {
                    if form.len() < MIN_SECRET {
                        continue;
                    }
                    let key = form.to_ascii_lowercase();
                    if seen.insert(key) {
                        patterns.push(form);
                        owner.push(index);
                    }
                }
            }
        }
        let automaton = if patterns.is_empty() {
            None
        } else {
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .kind(Some(AhoCorasickKind::DFA))
                .build(&patterns)
                .or_else(|_| {
                    AhoCorasick::builder()
                        .ascii_case_insensitive(true)
                        .match_kind(MatchKind::Standard)
                        .build(&patterns)
                })
                .ok()
        };
        Scrubber {
            automaton,
            owner,
            names,
        }
    }

    /// Whether there is nothing to look for.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// Whether `haystack` contains any form of any secret.
    pub fn contains(&self, haystack: &[u8]) -> bool {
        self.automaton
            .as_ref()
            .is_some_and(|ac| ac.is_match(haystack))
    }

    /// The merged ranges of every match in `haystack` (overlapping and adjacent matches become
    /// one range); `found[i]` is set for each credential that matched.
    pub fn spans(&self, haystack: &[u8], found: &mut [bool]) -> Vec<Span> {
        let Some(ac) = &self.automaton else {
            return Vec::new();
        };
        let mut merged: Vec<Span> = Vec::new();
        // Overlapping matches arrive ordered by end offset: a stack merge keeps the list sorted.
        for m in ac.find_overlapping_iter(haystack) {
            if let Some(slot) = self
                .owner
                .get(m.pattern().as_usize())
                .and_then(|i| found.get_mut(*i))
            {
                *slot = true;
            }
            let (mut start, end) = (m.start(), m.end());
            while let Some(&(s, e)) = merged.last() {
                if e >= start {
                    start = start.min(s);
                    merged.pop();
                } else {
                    break;
                }
            }
            merged.push((start, end));
        }
        merged
    }

    /// Credential names, by index (for `found`).
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Replaces each span of `haystack` with [`REDACTED`].
pub fn redact(haystack: &[u8], spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut last = 0;
    for &(s, e) in spans {
        if s < last {
            continue;
        }
        out.extend_from_slice(&haystack[last..s]);
        out.extend_from_slice(REDACTED.as_bytes());
        last = e;
    }
    out.extend_from_slice(&haystack[last..]);
    out
}

/// Scrubbers built for recently seen secret sets, so a request builds its automaton only when
/// its credential values are new (a rotation makes a new entry; old ones age out).
pub struct ScrubberCache {
    entries: Mutex<lru::LruCache<[u8; 32], Arc<Scrubber>>>,
}

impl Default for ScrubberCache {
    fn default() -> Self {
        ScrubberCache {
            entries: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(64).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }
}

impl ScrubberCache {
    /// The scrubber for `secrets`, built on first use.
    pub fn get(&self, secrets: &[(String, SecretString)]) -> Arc<Scrubber> {
        let mut hasher = Sha256::new();
        for (name, value) in secrets {
            hasher.update((name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            let v = value.expose_secret().as_bytes();
            hasher.update((v.len() as u64).to_le_bytes());
            hasher.update(v);
        }
        let key: [u8; 32] = hasher.finalize().into();
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(s) = entries.get(&key) {
                return s.clone();
            }
        }
        let built = Arc::new(Scrubber::new(secrets));
        if let Ok(mut entries) = self.entries.lock() {
            entries.put(key, built.clone());
        }
        built
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "tok-Zq8/very+secret 4711";

    fn scrubber() -> Scrubber {
        Scrubber::new(&[("c".into(), SecretString::from(SECRET.to_string()))])
    }

    fn scrubbed(s: &Scrubber, text: &[u8]) -> Vec<u8> {
        let mut found = [false];
        let spans = s.spans(text, &mut found);
        redact(text, &spans)
    }

    fn assert_gone(s: &Scrubber, encoded: &[u8]) {
        let text = [b"prefix \"".as_slice(), encoded, b"\" suffix"].concat();
        let out = scrubbed(s, &text);
        assert!(
            out.windows(REDACTED.len())
                .any(|w| w == REDACTED.as_bytes()),
            "{}",
            String::from_utf8_lossy(&out)
        );
        // No window of the encoded form survives.
        let shortest = encoded.len().min(WINDOW * 6);
        for w in encoded.windows(shortest) {
            assert!(
                !out.windows(w.len()).any(|o| o.eq_ignore_ascii_case(w)),
                "{} survived in {}",
                String::from_utf8_lossy(w),
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn every_form_is_found() {
        let s = scrubber();
        let b = SECRET.as_bytes();
        let form: String = url::form_urlencoded::byte_serialize(b).collect();
        let all = [
            b.to_vec(),
            SECRET.to_ascii_uppercase().into_bytes(),
            form.clone().into_bytes(),
            form.replace('%', "%25").into_bytes(),
            percent_all(b),
            percent_all(b).to_ascii_lowercase(),
            json_all(b),
            SECRET.replace('/', "\\/").into_bytes(),
            hex_lower(b),
            hex_lower(b).to_ascii_uppercase(),
            html_dec(b),
            html_hex(b),
            utf16(b, true),
            utf16(b, false),
        ];
        for a in all {
            assert_gone(&s, &a);
        }
    }

    #[test]
    fn base64_in_every_alignment_and_alphabet() {
        let s = scrubber();
        for engine in [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ] {
            for pre in ["", "a", "ab", "user:"] {
                let text = engine.encode(format!("{pre}{SECRET}!!").as_bytes());
                let out = scrubbed(&s, text.as_bytes());
                let core = base64_core(SECRET.as_bytes(), pre.len() % 3, engine);
                assert!(
                    !String::from_utf8_lossy(&out)
                        .contains(std::str::from_utf8(&core[2..core.len() - 2]).unwrap()),
                    "{pre}: {}",
                    String::from_utf8_lossy(&out)
                );
            }
        }
    }

    #[test]
    fn windows_and_merging() {
        let s = scrubber();
        // A truncated echo: 9 bytes from the middle.
        let out = scrubbed(&s, format!("x{}y", &SECRET[5..14]).as_bytes());
        assert_eq!(out, b"x[REDACTED]y");
        // Repeated: one replacement per contiguous run.
        let out = scrubbed(&s, format!("{SECRET}{SECRET}").as_bytes());
        assert_eq!(out, b"[REDACTED]");
        // Ordinary text untouched.
        assert_eq!(scrubbed(&s, b"hello world"), b"hello world");
    }

    #[test]
    fn short_secrets_match_whole() {
        let s = Scrubber::new(&[("c".into(), SecretString::from("abc123".to_string()))]);
        assert_eq!(scrubbed(&s, b"x abc123 y"), b"x [REDACTED] y");
        assert_eq!(scrubbed(&s, b"x abc12 y"), b"x abc12 y");
        let tiny = Scrubber::new(&[("c".into(), SecretString::from("ab".to_string()))]);
        assert!(tiny.is_empty());
    }
}
