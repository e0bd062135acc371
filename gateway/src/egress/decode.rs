//! Content-Encoding: the gateway decodes what the upstream encoded (gzip, deflate — zlib or raw
//! —, br; chained codings in reverse order) before scrubbing, as `fetch()` does per the Fetch
//! standard: the Worker gets the decoded body, without `Content-Encoding`. The decoded size is
//! bounded, so a decompression bomb is an error, not an allocation.

use async_compression::tokio::bufread::{BrotliDecoder, DeflateDecoder, GzipDecoder, ZlibDecoder};
use std::pin::Pin;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

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

fn is_zlib(head: &[u8]) -> bool {
    head.len() >= 2
        && head[0] & 0x0f == 8
        && (head[0] >> 4) <= 7
        && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0
}

/// A body being read: raw, or with codings undone as it is read.
pub type Reader = Pin<Box<dyn AsyncRead + Send>>;

/// Undoes `codings` (in the order they were applied) over `body` as it is read (well-kept
/// decoders from `async-compression`; output comes in reads of a bounded buffer, so a bomb is
/// stopped by the reader's own limit, not by an allocation). For `deflate`, whether the data
/// is zlib-wrapped or raw is decided on its first two bytes (servers send both).
pub async fn decoding(mut body: Reader, codings: &[String]) -> Result<Reader, DecodeError> {
    supported(codings)?;
    for coding in codings.iter().rev() {
        body = match coding.as_str() {
            "gzip" | "x-gzip" => {
                let mut d = GzipDecoder::new(BufReader::new(body));
                d.multiple_members(true);
                Box::pin(d)
            }
            "deflate" => {
                let mut head = Vec::with_capacity(2);
                (&mut body)
                    .take(2)
                    .read_to_end(&mut head)
                    .await
                    .map_err(|_| DecodeError::Corrupt {
                        coding: coding.clone(),
                    })?;
                let zlib = is_zlib(&head);
                let whole = BufReader::new(std::io::Cursor::new(head).chain(body));
                if zlib {
                    Box::pin(ZlibDecoder::new(whole))
                } else {
                    Box::pin(DeflateDecoder::new(whole))
                }
            }
            "br" => Box::pin(BrotliDecoder::new(BufReader::new(body))),
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

    // Decoding itself is tested through `body::Source` (chunked, chained, bombs, corrupt data).

    #[test]
    fn codings_are_listed_in_order_and_accept_encoding_keeps_what_can_be_undone() {
        assert_eq!(
            codings(&[("Content-Encoding".into(), "gzip, identity, br".into())]),
            vec!["gzip", "br"]
        );
        assert!(matches!(
            supported(&["zstd".into()]),
            Err(DecodeError::Unsupported(_))
        ));
        assert_eq!(
            supported(&["gzip".into(), "gzip".into(), "gzip".into(), "gzip".into()]),
            Err(DecodeError::TooManyCodings)
        );
        assert_eq!(accept_encoding("zstd, gzip;q=1, br"), "gzip;q=1, br");
        assert_eq!(accept_encoding("zstd"), "identity");
    }
}
