//! The secret matcher: one Aho-Corasick automaton over every form of every secret injected into
//! one request, used to scrub the response the Worker gets and to check redirect targets.
//!
//! A scan has two stages. Stage one, the sieve (`Sieve`), reads the haystack only at every
//! `stride`-th offset (stride = shortest pattern − 3, so 5 for secrets of 8 bytes or more) and
//! looks the 4-byte gram there (and, at every other such offset, the 7-byte gram) up in the set of
//! the patterns' grams, ignoring ASCII case: every occurrence of a pattern has one of its grams at
//! a looked-up offset. Stage two runs the exact automaton (a DFA, overlapping matches) only over
//! the merged regions around the offsets that hit — a pattern's length either side — so the
//! matches, and the spans, are exactly those of a scan of the whole haystack. Ordinary text hits
//! rarely (about 0.1% of a JSON body is searched by the automaton, none of random bytes); a body
//! dense with the secrets' grams makes one region of the whole body, so a scan costs at most the
//! sieve plus one automaton pass.
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

use aho_corasick::{AhoCorasick, AhoCorasickKind, Input, MatchKind};
use base64::Engine;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::num::NonZeroUsize;
use std::ops::Range;
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
    /// Stage one: which 4-byte grams occur in some pattern.
    sieve: Sieve,
    /// Credential index of each pattern.
    owner: Vec<usize>,
    /// The patterns, for tests.
    #[cfg(test)]
    patterns: Vec<Vec<u8>>,
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

/// The sieve's short grams (4 bytes) and long grams (7 bytes).
const GRAM: usize = 4;
const LONG_GRAM: usize = 7;
const LONG_MASK: u64 = (1 << (8 * LONG_GRAM)) - 1;
/// Sizes of the sieve's bit sets: 2^16 bits (8 KiB) for short grams, 2^18 (32 KiB) for long ones
/// — about 128 bits per gram for three 40-byte secrets, so under 1% of other grams need the
/// exact lookup (half the size was 10–15% slower for that, twice the size no faster).
const SHORT_BITS: u32 = 16;
const LONG_BITS: u32 = 18;
// Every pattern is at least one gram long.
const _: () = assert!(MIN_SECRET >= GRAM);

/// The sieve's key of up to 8 bytes: bit 5 (`0x20`) of every byte set. ASCII upper and lower
/// case differ only in that bit, so text that equals a gram up to case has the same key (so do a
/// few other byte pairs such as `[` and `{`; the sieve only has to be coarser than the
/// automaton).
#[inline(always)]
fn fold(x: u64) -> u64 {
    x | 0x2020_2020_2020_2020
}

/// `bytes` (at most 8) as a little-endian integer.
#[inline(always)]
fn load(bytes: &[u8]) -> u64 {
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(buf)
}

/// A set of gram keys: a bit set indexed by a multiplicative hash (one bit per key, so it
/// answers "no" for nearly all other keys at the cost of one load) before the exact sorted list.
struct GramSet<const BITS: u32, const WORDS: usize> {
    words: Box<[u64; WORDS]>,
    sorted: Vec<u64>,
}

impl<const BITS: u32, const WORDS: usize> GramSet<BITS, WORDS> {
    fn new(mut keys: Vec<u64>) -> Self {
        keys.sort_unstable();
        keys.dedup();
        let mut words = Box::new([0u64; WORDS]);
        for &key in &keys {
            let at = Self::slot(key);
            words[at / 64] |= 1 << (at % 64);
        }
        GramSet {
            words,
            sorted: keys,
        }
    }

    #[inline(always)]
    fn slot(key: u64) -> usize {
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - BITS)) as usize
    }

    /// False only when `key` is not in the set.
    #[inline(always)]
    fn maybe(&self, key: u64) -> bool {
        let at = Self::slot(key);
        self.words[at / 64] & (1 << (at % 64)) != 0
    }

    fn contains(&self, key: u64) -> bool {
        self.maybe(key) && self.sorted.binary_search(&key).is_ok()
    }
}

/// Stage one of a scan: which parts of a haystack can hold a match.
///
/// The haystack's 4-byte gram at every `stride`-th offset, and its 7-byte gram at every
/// `2 × stride`-th offset, is looked up in the grams of the patterns. A pattern of `m` bytes is
/// represented by its 7-byte grams when `m ≥ 2 × stride + 6` — an occurrence then spans
/// `m - 6 ≥ 2 × stride` offsets that start one of its 7-byte grams, so one of them is looked up
/// — and by its 4-byte grams otherwise (`m ≥ stride + 3` likewise). Long grams are specific:
/// `\u00` is in every JSON-escaped form, `\u0067\` only in those of a `g`, so ordinary escaped
/// text does not hit. A region starts only where text holds a true gram of a pattern (up to
/// [`fold`]) and grows while the next offsets' bit-set answers say "maybe"; the automaton then
/// runs only over the regions.
struct Sieve {
    /// Keys of 4-byte grams.
    short: GramSet<SHORT_BITS, { 1 << (SHORT_BITS - 6) }>,
    /// Keys of 7-byte grams.
    long: GramSet<LONG_BITS, { 1 << (LONG_BITS - 6) }>,
    /// max(1, shortest pattern length − 3).
    stride: usize,
    /// The longest pattern length.
    reach: usize,
}

impl Sieve {
    fn new(patterns: &[Vec<u8>]) -> Sieve {
        let shortest = patterns.iter().map(Vec::len).min().unwrap_or(GRAM);
        let reach = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let stride = shortest.saturating_sub(GRAM - 1).max(1);
        let (mut short, mut long) = (Vec::new(), Vec::new());
        for pattern in patterns {
            if pattern.len() >= 2 * stride + LONG_GRAM - 1 {
                long.extend(
                    pattern
                        .windows(LONG_GRAM)
                        .map(|g| fold(load(g)) & LONG_MASK),
                );
            } else {
                short.extend(pattern.windows(GRAM).map(|g| fold(load(g)) & 0xffff_ffff));
            }
        }
        Sieve {
            short: GramSet::new(short),
            long: GramSet::new(long),
            stride,
            reach,
        }
    }

    /// Whether the gram at `p` (an offset with at least 4 bytes after it) is a short gram of a
    /// pattern, or, when `long`, its 7-byte gram is a long one. Unless `exact`, a bit set's
    /// "maybe" is taken as a yes (for an offset whose region would only extend an open one, a
    /// rare false yes costs less than the lookups it saves in text dense with grams).
    #[inline(always)]
    fn hit(&self, haystack: &[u8], p: usize, long: bool, exact: bool) -> bool {
        let Some(bytes) = haystack.get(p..p + 8) else {
            // The last 7 bytes: padded with zeros, masked like the grams.
            let tail = haystack.get(p..).unwrap_or_default();
            let key = fold(load(&tail[..tail.len().min(8)]));
            return self.short.contains(key & 0xffff_ffff)
                || (long && tail.len() >= LONG_GRAM && self.long.contains(key & LONG_MASK));
        };
        let key = fold(load(bytes));
        let (short_key, long_key) = (key & 0xffff_ffff, key & LONG_MASK);
        if long {
            // Both bit sets first (no branch between them: the common answer is "neither").
            (self.short.maybe(short_key) | self.long.maybe(long_key))
                && (!exact || self.short.contains(short_key) || self.long.contains(long_key))
        } else {
            self.short.maybe(short_key) && (!exact || self.short.contains(short_key))
        }
    }

    /// Calls `visit` with the ranges of `haystack` the automaton must search (in order, disjoint,
    /// not adjacent; together they contain every match) until it returns false. At worst one
    /// range: the whole haystack.
    fn regions(&self, haystack: &[u8], mut visit: impl FnMut(Range<usize>) -> bool) {
        // A match holding the gram at `p` lies in `p + GRAM - reach .. p + reach`.
        let back = self.reach.saturating_sub(GRAM);
        let (mut p, mut long) = (0, true);
        while p + GRAM <= haystack.len() {
            if !self.hit(haystack, p, long, true) {
                p += self.stride;
                long = !long;
                continue;
            }
            let start = p.saturating_sub(back);
            let mut end = (p + self.reach).min(haystack.len());
            // The region grows while the next offsets' regions would overlap it.
            loop {
                p += self.stride;
                long = !long;
                if p + GRAM > haystack.len() || p.saturating_sub(back) > end {
                    break;
                }
                if self.hit(haystack, p, long, false) {
                    end = (p + self.reach).min(haystack.len());
                }
            }
            if !visit(start..end) {
                return;
            }
        }
    }
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
                // A contiguous NFA: 0.36 MB per scrubber instead of a DFA's 8.3 MB (the cache
                // holds 64), 8 ms to build instead of 35; as fast behind the sieve, ~1.7× slower
                // only where the sieve passes everything (a body made of the secrets' grams).
                .kind(Some(AhoCorasickKind::ContiguousNFA))
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
            sieve: Sieve::new(&patterns),
            #[cfg(test)]
            patterns: patterns.clone(),
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
        let Some(ac) = &self.automaton else {
            return false;
        };
        let mut hit = false;
        self.sieve.regions(haystack, |region| {
            hit = ac.is_match(Input::new(haystack).span(region));
            !hit
        });
        hit
    }

    /// The merged ranges of every match in `haystack` (overlapping and adjacent matches become
    /// one range); `found[i]` is set for each credential that matched.
    pub fn spans(&self, haystack: &[u8], found: &mut [bool]) -> Vec<Span> {
        let Some(ac) = &self.automaton else {
            return Vec::new();
        };
        let mut merged: Vec<Span> = Vec::new();
        // Regions arrive in order and do not overlap, and a match lies inside one region.
        self.sieve.regions(haystack, |region| {
            let input = Input::new(haystack).span(region);
            self.collect(ac.find_overlapping_iter(input), found, &mut merged);
            true
        });
        merged
    }

    /// The full scan without the sieve: the reference [`Scrubber::spans`] must agree with.
    #[cfg(test)]
    fn spans_full_scan(&self, haystack: &[u8], found: &mut [bool]) -> Vec<Span> {
        let Some(ac) = &self.automaton else {
            return Vec::new();
        };
        let mut merged: Vec<Span> = Vec::new();
        self.collect(ac.find_overlapping_iter(haystack), found, &mut merged);
        merged
    }

    /// Adds matches (ordered by end offset, each ending after every span already in `merged`
    /// starts) to `merged`, joining overlapping and adjacent ones, and marks their owners.
    fn collect(
        &self,
        matches: impl Iterator<Item = aho_corasick::Match>,
        found: &mut [bool],
        merged: &mut Vec<Span>,
    ) {
        // Overlapping matches arrive ordered by end offset: a stack merge keeps the list sorted.
        for m in matches {
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
    }

    /// Credential names, by index (for `found`).
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The longest pattern: a match is never longer.
    pub fn reach(&self) -> usize {
        self.sieve.reach
    }
}

/// The longest run of matches a [`StreamScrub`] holds back to rescan with the next chunk.
const MAX_HELD: usize = 4096;

/// Scrubbing a body that arrives in chunks: each chunk is scanned together with the tail of
/// the bytes before it that could still begin a match (fewer than [`Scrubber::reach`] bytes, or
/// a match found across the cut), so a secret split across chunks is found as in the whole body.
/// What it emits is what [`redact`] of the whole body gives, except that two matches meeting
/// exactly at a cut become two `[REDACTED]` instead of one.
pub struct StreamScrub {
    scrubber: Arc<Scrubber>,
    /// Bytes not yet emitted: they may begin a match that the next chunk completes.
    carry: Vec<u8>,
    /// Per credential: found so far.
    found: Vec<bool>,
}

impl StreamScrub {
    /// A scrub of one body with `scrubber`.
    pub fn new(scrubber: Arc<Scrubber>) -> StreamScrub {
        let found = vec![false; scrubber.names().len()];
        StreamScrub {
            scrubber,
            carry: Vec::new(),
            found,
        }
    }

    /// Takes the next chunk; returns the scrubbed bytes that can be emitted now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.carry.extend_from_slice(chunk);
        let spans = self.scrubber.spans(&self.carry, &mut self.found);
        // A match not complete in `carry` starts in its last `reach - 1` bytes; a match found
        // across that cut is kept whole for the next scan.
        let mut cut = self
            .carry
            .len()
            .saturating_sub(self.scrubber.reach().saturating_sub(1));
        if let Some(&(s, e)) = spans.iter().find(|&&(s, e)| s < cut && e > cut) {
            // Every byte of a found span is covered by matches: a long run (a body dense with
            // the secret's forms) is emitted redacted instead of being rescanned with every
            // chunk; only a match of the run still open at its end can go on beyond it, and
            // what it leaves is shorter than a pattern — a piece of fewer than `WINDOW` secret
            // bytes, which the matcher never catches anyway.
            cut = if cut - s <= MAX_HELD { s } else { e };
        }
        let emitted: Vec<Span> = spans.into_iter().filter(|&(_, e)| e <= cut).collect();
        let out = redact(&self.carry[..cut], &emitted);
        self.carry.drain(..cut);
        out
    }

    /// The end of the body: the rest, scrubbed.
    pub fn finish(&mut self) -> Vec<u8> {
        let carry = std::mem::take(&mut self.carry);
        let spans = self.scrubber.spans(&carry, &mut self.found);
        redact(&carry, &spans)
    }

    /// Names of the credentials found so far.
    pub fn found(&self) -> impl Iterator<Item = &str> {
        self.scrubber
            .names()
            .iter()
            .zip(&self.found)
            .filter(|(_, hit)| **hit)
            .map(|(name, _)| name.as_str())
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

/// [`redact`] into `text` itself: without a new buffer when no replacement runs ahead of the
/// bytes still to be read (the spans so far are, in sum, at least as long as their replacements
/// — so a 1 MiB body is not copied into fresh memory), else through a new buffer.
pub fn redact_in_place(text: &mut Vec<u8>, spans: &[Span]) {
    let mut growth: isize = 0;
    let mut last = 0;
    for &(s, e) in spans {
        if s < last {
            continue;
        }
        growth += REDACTED.len() as isize - (e - s) as isize;
        if growth > 0 {
            *text = redact(text, spans);
            return;
        }
        last = e;
    }
    let (mut write, mut read) = (0, 0);
    for &(s, e) in spans {
        if s < read {
            continue;
        }
        text.copy_within(read..s, write);
        write += s - read;
        text[write..write + REDACTED.len()].copy_from_slice(REDACTED.as_bytes());
        write += REDACTED.len();
        read = e;
    }
    let rest = text.len() - read;
    text.copy_within(read.., write);
    text.truncate(write + rest);
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

    /// Secret sets for the sieve tests: long secrets (stride 5), a short one (whole forms only,
    /// stride 3), a 4-byte one (stride 1), and one whose percent-encoded form is 13 bytes long,
    /// the longest its stride (4) allows to be looked up by 4-byte grams only.
    fn secret_sets() -> Vec<Vec<&'static str>> {
        vec![
            vec![
                "ghp_0123456789abcdefghijklmnopqrstuvwxyz",
                "sk-live/AbCdEf+0987654321 zyx",
                "xoxb-1111-2222-QwErTyUiOp",
            ],
            vec![SECRET, "abc123"],
            vec!["k9#Z", "päss wörd/ünïcode"],
            vec!["ab//c/d"],
        ]
    }

    fn build(set: &[&str]) -> Scrubber {
        let secrets: Vec<(String, SecretString)> = set
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("c{i}"), SecretString::from(s.to_string())))
            .collect();
        Scrubber::new(&secrets)
    }

    /// A deterministic xorshift generator.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }

        /// JSON-ish text: objects with numbers, words, escapes, hex ids, base64-looking values.
        fn json(&mut self, n: usize) -> Vec<u8> {
            const WORDS: [&str; 12] = [
                "issue",
                "number",
                "state",
                "open",
                "labels",
                "about",
                "the",
                "thing",
                "\\u00e9t\\u00e9",
                "%2Fpath%3Fq%3D1",
                "&#x27;quoted&#39;",
                "zyxw",
            ];
            let mut out = Vec::with_capacity(n + 64);
            while out.len() < n {
                let field = match self.below(5) {
                    0 => format!("{}", self.next() % 100_000),
                    1 => format!("\"{:016x}\"", self.next()),
                    2 => format!(
                        "\"{}\"",
                        base64::engine::general_purpose::STANDARD.encode(self.bytes(12))
                    ),
                    _ => format!("\"{} {}\"", WORDS[self.below(12)], WORDS[self.below(12)]),
                };
                out.extend_from_slice(format!("{{\"k{}\":{field}}},\n", self.below(50)).as_bytes());
            }
            out.truncate(n);
            out
        }

        /// `bytes` with the case of some ASCII letters flipped.
        fn flip_case(&mut self, bytes: &[u8]) -> Vec<u8> {
            bytes
                .iter()
                .map(|&b| {
                    if b.is_ascii_alphabetic() && self.below(2) == 0 {
                        b ^ 0x20
                    } else {
                        b
                    }
                })
                .collect()
        }
    }

    /// The sieve's answer equals the full automaton's: spans, credentials found, `contains`.
    fn assert_same(s: &Scrubber, body: &[u8], what: &str) {
        let n = s.names().len();
        let (mut sieved, mut full) = (vec![false; n], vec![false; n]);
        let got = s.spans(body, &mut sieved);
        let want = s.spans_full_scan(body, &mut full);
        assert_eq!(got, want, "{what}: spans differ");
        assert_eq!(sieved, full, "{what}: credentials found differ");
        assert_eq!(
            s.contains(body),
            !want.is_empty(),
            "{what}: contains differs"
        );
    }

    /// Every encoded form of every secret, whole, with a few truncated echoes.
    fn planted(set: &[&str]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for secret in set {
            for form in forms(secret.as_bytes()) {
                if form.len() > 9 {
                    out.push(form[..form.len() - 3].to_vec());
                    out.push(form[5..].to_vec());
                }
                out.push(form);
            }
        }
        out
    }

    #[test]
    fn the_sieve_finds_what_the_full_scan_finds() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for set in secret_sets() {
            let s = build(&set);
            // Bodies without secrets (the sieve may still hit by chance).
            for len in [0, 1, 3, 4, 5, 7, 8, 9, 63, 64, 65, 1000, 20_000] {
                assert_same(&s, &rng.bytes(len), "random bytes");
                assert_same(&s, &rng.json(len), "json");
            }
            // Every form at every offset modulo each stride (all ≤ 20 here), at the very start and
            // the very end, with flipped case, next to and overlapping another echo.
            for form in planted(&set) {
                for offset in 0..20 {
                    let n = offset + 40 * rng.below(3);
                    let before = rng.json(n);
                    let n = rng.below(60);
                    let after = rng.json(n);
                    let flipped = rng.flip_case(&form);
                    let junk = rng.bytes(offset.max(3));
                    for body in [
                        [before.as_slice(), &form, &after].concat(),
                        [before.as_slice(), &form].concat(),
                        [&form[..], &after].concat(),
                        form.clone(),
                        [before.as_slice(), &flipped, &after].concat(),
                        [&before[..], &form, &form, &after].concat(),
                        [&before[..], &form[..form.len() / 2], &flipped, &after].concat(),
                        [&junk[..offset], &form, &junk[..3]].concat(),
                    ] {
                        assert_same(&s, &body, &format!("{set:?} planted, offset {offset}"));
                    }
                }
            }
            // Many forms in one long body.
            let mut long = Vec::new();
            for form in planted(&set) {
                let n = rng.below(200);
                long.extend(rng.json(n));
                long.extend(rng.flip_case(&form));
            }
            assert_same(&s, &long, "all forms in one body");
        }
    }

    #[test]
    fn every_pattern_alone_at_every_offset() {
        // Alone (between bytes no gram holds), so only the pattern's own grams can make the
        // sieve hit: a pattern put in the wrong class or a stride one too long shows here.
        for set in secret_sets() {
            let s = build(&set);
            for pattern in &s.patterns {
                for offset in 0..2 * s.sieve.stride + 1 {
                    let body = [&vec![0xff; offset][..], pattern, &[0xff; 9]].concat();
                    assert_same(&s, &body, &format!("{set:?}, pattern alone at {offset}"));
                    assert!(!s.spans(&body, &mut [false; 3]).is_empty());
                    assert_same(&s, &body[..offset + pattern.len()], "at the end");
                }
            }
        }
    }

    /// The bytes of `body` the automaton is run over.
    fn searched(s: &Scrubber, body: &[u8]) -> usize {
        let mut total = 0;
        s.sieve.regions(body, |r| {
            total += r.len();
            true
        });
        total
    }

    #[test]
    fn the_sieve_skips_text_without_secrets_and_bounds_hostile_bodies() {
        let s = build(&secret_sets()[0]);
        let mut rng = Rng(7);
        let json = rng.json(1 << 16);
        let random = rng.bytes(1 << 16);
        assert!(
            searched(&s, &json) < json.len() / 10,
            "{}",
            searched(&s, &json)
        );
        assert!(searched(&s, &random) < random.len() / 10);
        // A body made of the secrets' grams: the automaton runs over it once, no more.
        let hostile: Vec<u8> = planted(&secret_sets()[0])
            .concat()
            .into_iter()
            .cycle()
            .take(1 << 16)
            .collect();
        assert_eq!(searched(&s, &hostile), hostile.len());
        assert_same(&s, &hostile, "hostile");
    }

    #[test]
    fn redacting_in_place_equals_redacting_into_a_new_buffer() {
        let mut rng = Rng(11);
        for _ in 0..2000 {
            let n = rng.below(120);
            let text = rng.bytes(n);
            // Sorted, disjoint spans of 1..=24 bytes (shorter and longer than the replacement).
            let mut spans = Vec::new();
            let mut at = rng.below(8);
            while at < text.len() {
                let end = (at + 1 + rng.below(24)).min(text.len());
                spans.push((at, end));
                at = end + rng.below(12);
            }
            let mut in_place = text.clone();
            redact_in_place(&mut in_place, &spans);
            assert_eq!(in_place, redact(&text, &spans), "{spans:?}");
        }
    }

    #[test]
    fn the_sieve_key_ignores_ascii_case() {
        for b in 0..=255u8 {
            let x = [b, b'Q', 0xC4, b, b'z', b'@', b'[', b];
            assert_eq!(
                fold(u64::from_le_bytes(x)),
                fold(u64::from_le_bytes(x.map(|c| c.to_ascii_lowercase()))),
                "{b:#x}"
            );
            assert_eq!(
                fold(u64::from_le_bytes(x)),
                fold(u64::from_le_bytes(x.map(|c| c.to_ascii_uppercase()))),
                "{b:#x}"
            );
        }
    }
}
