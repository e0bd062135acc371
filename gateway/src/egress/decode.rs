//! Content-Encoding: the gateway decodes what the upstream encoded (gzip, deflate — zlib or raw
//! —, br; chained codings in reverse order) before scrubbing, as `fetch()` does per the Fetch
//! standard: the Worker gets the decoded body, without `Content-Encoding`. The decoded size is
//! bounded, so a decompression bomb is an error, not an allocation.

use std::io::Read;

/// At most this many codings are undone (`gzip, gzip, gzip, …` is refused).
const MAX_CODINGS: usize = 3;

/// Codings the gateway can undo, as accepted in a Worker's `Accept-Encoding`.
const SUPPORTED: &[&str] = &["gzip", "x-gzip", "deflate", "br", "identity"];

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A coding the gateway does not know.
    #[error("unsupported Content-Encoding {0:?}")]
    Unsupported(String),
    /// Too many codings.
    #[error("more than {MAX_CODINGS} content codings")]
    TooManyCodings,
    /// The decoded body would exceed the limit.
    #[error("decoded response body exceeds {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not valid data for its coding.
    #[error("corrupt {coding} body")]
    Corrupt {
        /// The coding.
        coding: String,
    },
}

/// The codings of a response, in the order they were applied (`identity` left out).
pub fn codings(headers: &[(String, String)]) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case("content-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect()
}

/// Whether every coding can be undone.
pub fn supported(codings: &[String]) -> Result<(), DecodeError> {
    if codings.len() > MAX_CODINGS {
        return Err(DecodeError::TooManyCodings);
    }
    match codings.iter().find(|c| !SUPPORTED.contains(&c.as_str())) {
        Some(c) => Err(DecodeError::Unsupported(c.clone())),
        None => Ok(()),
    }
}

fn read_limited(mut reader: impl Read, limit: usize, coding: &str) -> Result<Vec<u8>, DecodeError> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                if out.len() + n > limit {
                    return Err(DecodeError::TooLarge { limit });
                }
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                return Err(DecodeError::Corrupt {
                    coding: coding.to_string(),
                })
            }
        }
    }
}

fn is_zlib(body: &[u8]) -> bool {
    body.len() >= 2
        && body[0] & 0x0f == 8
        && (body[0] >> 4) <= 7
        && (u16::from(body[0]) << 8 | u16::from(body[1])) % 31 == 0
}

/// Undoes `codings` (in the order they were applied), producing at most `limit` bytes.
pub fn decode(mut body: Vec<u8>, codings: &[String], limit: usize) -> Result<Vec<u8>, DecodeError> {
    supported(codings)?;
    for coding in codings.iter().rev() {
        body = match coding.as_str() {
            "gzip" | "x-gzip" => read_limited(
                flate2::read::MultiGzDecoder::new(body.as_slice()),
                limit,
                coding,
            )?,
            "deflate" if is_zlib(&body) => read_limited(
                flate2::read::ZlibDecoder::new(body.as_slice()),
                limit,
                coding,
            )?,
            "deflate" => read_limited(
                flate2::read::DeflateDecoder::new(body.as_slice()),
                limit,
                coding,
            )?,
            "br" => read_limited(
                brotli_decompressor::Decompressor::new(body.as_slice(), 4096),
                limit,
                coding,
            )?,
            _ => body,
        };
    }
    Ok(body)
}

/// A Worker's `Accept-Encoding`, reduced to the codings the gateway can undo (`identity` when
/// none is left).
pub fn accept_encoding(value: &str) -> String {
    let kept: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|item| {
            let name = item.split(';').next().unwrap_or("").trim();
            SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(name))
        })
        .collect();
    if kept.is_empty() {
        "identity".into()
    } else {
        kept.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn chained_codings_are_undone_in_reverse() {
        let plain = b"hello hello hello".to_vec();
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&gzip(&plain)).unwrap();
        let body = z.finish().unwrap();
        let c = vec!["gzip".to_string(), "deflate".to_string()];
        assert_eq!(decode(body, &c, 1 << 20).unwrap(), plain);
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&plain).unwrap();
        assert_eq!(
            decode(raw.finish().unwrap(), &["deflate".into()], 1 << 20).unwrap(),
            plain
        );
    }

    #[test]
    fn bombs_and_unknown_codings_are_errors() {
        let bomb = gzip(&vec![0u8; 4 << 20]);
        assert_eq!(
            decode(bomb, &["gzip".into()], 1 << 20),
            Err(DecodeError::TooLarge { limit: 1 << 20 })
        );
        assert!(matches!(
            decode(vec![1, 2], &["zstd".into()], 10),
            Err(DecodeError::Unsupported(_))
        ));
        assert!(matches!(
            decode(vec![1, 2, 3], &["gzip".into()], 10),
            Err(DecodeError::Corrupt { .. })
        ));
        assert_eq!(
            codings(&[("Content-Encoding".into(), "gzip, identity, br".into())]),
            vec!["gzip", "br"]
        );
        assert_eq!(accept_encoding("zstd, gzip;q=1, br"), "gzip;q=1, br");
        assert_eq!(accept_encoding("zstd"), "identity");
    }
}
