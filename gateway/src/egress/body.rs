//! An upstream response body on its way to the Worker, as it arrives: read from the connection
//! (bounded: at most [`MAX_RESPONSE_BYTES`] raw), Content-Encoding undone ([`decode`]; at most
//! [`MAX_RESPONSE_BYTES`] decoded), every injected secret scrubbed ([`StreamScrub`]: a secret
//! split across chunks is still found). The egress hands the Worker what is ready with the
//! response head, and the rest as a stream ([`isogate_pool::BodyStream`]) that the Worker's
//! reads pace.

use super::decode::{self, Reader};
use super::scrub::{Scrubber, StreamScrub};
use super::{Failure, MAX_RESPONSE_BYTES};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

/// Bytes read from the body per step (so per chunk the Worker gets, before scrubbing).
const READ_BYTES: usize = 16 * 1024;

/// Most bytes handed over with the response head.
pub const HEAD_BYTES: usize = 64 * 1024;

/// Why the raw body stopped, carried inside the `io::Error` the decoders pass through.
#[derive(Debug, thiserror::Error)]
enum RawError {
    #[error("the response body broke off")]
    Broke,
    #[error("the response body is too large")]
    TooLarge,
}

/// The raw body of `response` as a reader, counting its bytes into `raw` and refusing more than
/// [`MAX_RESPONSE_BYTES`].
pub fn raw_reader(body: hyper::body::Incoming, raw: Arc<AtomicUsize>) -> Reader {
    let stream = body.into_data_stream().map(move |frame| {
        let data: Bytes = frame.map_err(|_| std::io::Error::other(RawError::Broke))?;
        let total = raw.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        if total > MAX_RESPONSE_BYTES {
            return Err(std::io::Error::other(RawError::TooLarge));
        }
        Ok(data)
    });
    Box::pin(tokio_util::io::StreamReader::new(stream))
}

/// A response body being read, decoded and scrubbed.
pub struct Source {
    reader: Reader,
    scrub: Option<StreamScrub>,
    decoded: usize,
    buf: Box<[u8]>,
    ended: bool,
    host: String,
    /// What was decoded (for the message of a corrupt body).
    codings: String,
}

impl Source {
    /// `raw` with `codings` undone (none: passed through) and `scrubber`'s secrets scrubbed.
    pub async fn open(
        raw: Reader,
        codings: &[String],
        scrubber: Option<Arc<Scrubber>>,
        host: &str,
    ) -> Result<Source, Failure> {
        let reader = if codings.is_empty() {
            raw
        } else {
            decode::decoding(raw, codings)
                .await
                .map_err(|error| match error {
                    decode::DecodeError::Corrupt { .. } => Failure::CorruptEncoding {
                        host: host.to_string(),
                        error,
                    },
                    error => Failure::UnsupportedEncoding {
                        host: host.to_string(),
                        error,
                    },
                })?
        };
        Ok(Source {
            reader,
            scrub: scrubber.map(StreamScrub::new),
            decoded: 0,
            buf: vec![0; READ_BYTES].into_boxed_slice(),
            ended: false,
            host: host.to_string(),
            codings: codings.join(", "),
        })
    }

    /// The next bytes for the Worker; `None` at the end. Cancel-safe: a read that has not
    /// completed consumed nothing.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, Failure> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let n = match self.reader.read(&mut self.buf).await {
                Ok(n) => n,
                Err(e) => return Err(self.failure(&e)),
            };
            if n == 0 {
                self.ended = true;
                let rest = self.scrub.as_mut().map(StreamScrub::finish);
                return Ok(rest.filter(|r| !r.is_empty()));
            }
            self.decoded += n;
            if self.decoded > MAX_RESPONSE_BYTES {
                return Err(Failure::DecodedTooLarge {
                    host: self.host.clone(),
                });
            }
            let out = match &mut self.scrub {
                Some(scrub) => scrub.push(&self.buf[..n]),
                None => self.buf[..n].to_vec(),
            };
            if !out.is_empty() {
                return Ok(Some(out));
            }
        }
    }

    /// What is ready now, up to [`HEAD_BYTES`] (more only by the last read), without waiting;
    /// and whether that is the whole body.
    pub fn ready(&mut self) -> Result<(Vec<u8>, bool), Failure> {
        let mut out = Vec::new();
        while out.len() < HEAD_BYTES {
            match self.next().now_or_never() {
                None => return Ok((out, false)),
                Some(Ok(None)) => return Ok((out, true)),
                Some(Ok(Some(bytes))) => out.extend_from_slice(&bytes),
                Some(Err(f)) => return Err(f),
            }
        }
        Ok((out, false))
    }

    /// Names of the credentials scrubbed so far.
    pub fn scrubbed(&self) -> Vec<String> {
        self.scrub
            .as_ref()
            .map(|s| s.found().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn failure(&self, e: &std::io::Error) -> Failure {
        let host = self.host.clone();
        match e.get_ref().and_then(|i| i.downcast_ref::<RawError>()) {
            Some(RawError::Broke) => Failure::ResponseRead { host },
            Some(RawError::TooLarge) => Failure::ResponseTooLarge { host },
            None => Failure::CorruptEncoding {
                host,
                error: decode::DecodeError::Corrupt {
                    coding: self.codings.clone(),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;
    use std::io::Write;

    fn reader(bytes: Vec<u8>, chunk: usize) -> Reader {
        let parts: Vec<std::io::Result<Bytes>> = bytes
            .chunks(chunk.max(1))
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Box::pin(tokio_util::io::StreamReader::new(futures::stream::iter(
            parts,
        )))
    }

    async fn read_all(
        bytes: Vec<u8>,
        chunk: usize,
        codings: &[&str],
        scrubber: Option<Arc<Scrubber>>,
    ) -> Result<Vec<u8>, Failure> {
        let codings: Vec<String> = codings.iter().map(|c| c.to_string()).collect();
        let mut source = Source::open(reader(bytes, chunk), &codings, scrubber, "h").await?;
        let mut out = Vec::new();
        while let Some(b) = source.next().await? {
            out.extend_from_slice(&b);
        }
        Ok(out)
    }

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn codings_are_undone_in_reverse_whatever_the_chunking() {
        let plain = b"hello hello hello ".repeat(2000);
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&gzip(&plain)).unwrap();
        let zlib_over_gzip = z.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        raw.write_all(&plain).unwrap();
        let raw_deflate = raw.finish().unwrap();
        let mut br = Vec::new();
        brotli::BrotliCompress(
            &mut plain.as_slice(),
            &mut br,
            &brotli::enc::BrotliEncoderParams::default(),
        )
        .unwrap();
        let mut two = gzip(b"first ");
        two.extend(gzip(b"second"));
        for chunk in [1, 7, 4096, 1 << 20] {
            let c = ["gzip", "deflate"];
            assert_eq!(
                read_all(zlib_over_gzip.clone(), chunk, &c, None)
                    .await
                    .unwrap(),
                plain
            );
            let d = read_all(raw_deflate.clone(), chunk, &["deflate"], None).await;
            assert_eq!(d.unwrap(), plain);
            assert_eq!(
                read_all(br.clone(), chunk, &["br"], None).await.unwrap(),
                plain
            );
            let members = read_all(two.clone(), chunk, &["gzip"], None).await.unwrap();
            assert_eq!(members, b"first second");
        }
    }

    #[tokio::test]
    async fn bombs_and_corrupt_bodies_are_failures() {
        let bomb = gzip(&vec![0u8; MAX_RESPONSE_BYTES + 1]);
        assert!(bomb.len() < 64 * 1024);
        assert!(matches!(
            read_all(bomb, 4096, &["gzip"], None).await,
            Err(Failure::DecodedTooLarge { .. })
        ));
        assert!(matches!(
            read_all(vec![1, 2, 3], 1, &["gzip"], None).await,
            Err(Failure::CorruptEncoding { .. })
        ));
        assert!(matches!(
            read_all(vec![1, 2], 1, &["zstd"], None).await,
            Err(Failure::UnsupportedEncoding {
                error: decode::DecodeError::Unsupported(_),
                ..
            })
        ));
    }

    #[tokio::test]
    async fn a_secret_split_across_chunks_is_scrubbed_as_in_the_whole_body() {
        let secret = "ghp_0123456789abcdefghijklmnopqrstuvwxyz";
        let scrubber = Arc::new(Scrubber::new(&[(
            "gh".into(),
            SecretString::from(secret.to_string()),
        )]));
        let encoded = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, secret);
        let body = format!(
            "{{\"echo\":\"{secret}\",\"b64\":\"{encoded}\",\"tail\":\"{}\"}} and some text after",
            &secret[..12]
        )
        .into_bytes();
        let whole = super::super::scrub::redact(&body, &scrubber.spans(&body, &mut [false]));
        assert!(!String::from_utf8_lossy(&whole).contains("0123456789"));
        for chunk in [1, 2, 3, 5, 8, 13, 64, 4096] {
            let got = read_all(body.clone(), chunk, &[], Some(scrubber.clone()))
                .await
                .unwrap();
            assert_eq!(got, whole, "chunks of {chunk} bytes");
        }
        // Gzipped and chunked: decoded first, then scrubbed the same.
        let got = read_all(gzip(&body), 3, &["gzip"], Some(scrubber.clone()))
            .await
            .unwrap();
        assert_eq!(got, whole);
    }

    #[tokio::test]
    async fn a_dense_run_of_secrets_is_scrubbed_in_linear_time() {
        // A body that is one long overlapping run of the secret's forms: held back whole it
        // would be rescanned at every chunk; it is emitted redacted instead, and no window of
        // the secret survives.
        let secret = "aaaaaaaaaaaaaaaa";
        let scrubber = Arc::new(Scrubber::new(&[(
            "a".into(),
            SecretString::from(secret.to_string()),
        )]));
        let body = vec![b'a'; 4 << 20];
        let got = read_all(body, 1024, &[], Some(scrubber)).await.unwrap();
        assert!(
            !got.windows(8).any(|w| w == b"aaaaaaaa"),
            "a window survived"
        );
        assert!(got.len() < 64 * 1024, "{} bytes", got.len());
    }
}
