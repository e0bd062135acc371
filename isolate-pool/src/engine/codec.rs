//! The compressor/decompressor behind `CompressionStream` and `DecompressionStream` (the
//! Compression standard's `gzip`, `deflate` (zlib) and `deflate-raw`), over flate2's streaming
//! `Compress`/`Decompress`. The bootstrap wraps one [`Codec`] in a TransformStream: `feed` hands it
//! a chunk, `next` drains its output.
//!
//! Hostile input is the normal case here:
//! - **Output is bounded per call.** `next` produces at most [`OUTPUT_CHUNK`] bytes, so a
//!   decompression bomb becomes many small chunks, each a JS value on the isolate's memory
//!   account (the stream's consumer, or the memory limit, decides how far it goes), never one
//!   huge native allocation.
//! - **The codec state is native memory outside the isolate's account** (zlib's window and
//!   tables, up to a few hundred KiB). The number of live codecs per isolate is capped
//!   ([`MAX_LIVE_CODECS`]); a codec gives its state back as soon as its stream ends or fails,
//!   not only when it is collected.
//! - Corrupt input, trailing data after the end and a truncated stream are TypeErrors, as the
//!   standard says; nothing here panics on input.

use std::cell::Cell;
use std::rc::Rc;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use rquickjs::{Ctx, Exception, Result, TypedArray};

/// The most bytes one `next()` call returns.
pub(super) const OUTPUT_CHUNK: usize = 64 * 1024;
/// The most codecs an isolate may hold at once (each owns native zlib state).
pub(super) const MAX_LIVE_CODECS: usize = 16;
/// zlib's window: 2^15 bytes (what the formats use).
const WINDOW_BITS: u8 = 15;

enum State {
    Compress(Box<Compress>),
    Decompress(Box<Decompress>),
    /// Ended or failed: the native state is gone.
    Done,
}

/// One compression or decompression stream.
#[rquickjs::class(rename = "Codec")]
#[derive(rquickjs::class::Trace, rquickjs::JsLifetime)]
pub struct Codec {
    #[qjs(skip_trace)]
    state: State,
    /// Input not yet consumed.
    #[qjs(skip_trace)]
    input: Vec<u8>,
    #[qjs(skip_trace)]
    pos: usize,
    /// The isolate's count of live codecs (shared with the host function that makes them).
    #[qjs(skip_trace)]
    live: Rc<Cell<usize>>,
    #[qjs(skip_trace)]
    what: &'static str,
}

impl Codec {
    /// A codec for `format` (`"gzip"`, `"deflate"`, `"deflate-raw"`), counted in `live`.
    pub fn new(ctx: &Ctx<'_>, format: &str, compress: bool, live: Rc<Cell<usize>>) -> Result<Self> {
        let what = if compress {
            "CompressionStream"
        } else {
            "DecompressionStream"
        };
        if live.get() >= MAX_LIVE_CODECS {
            return Err(Exception::throw_range(
                ctx,
                &format!(
                    "{what}: at most {MAX_LIVE_CODECS} compression streams may be open at once"
                ),
            ));
        }
        let level = Compression::default();
        let state = match (format, compress) {
            ("gzip", true) => State::Compress(Box::new(Compress::new_gzip(level, WINDOW_BITS))),
            ("deflate", true) => State::Compress(Box::new(Compress::new(level, true))),
            ("deflate-raw", true) => State::Compress(Box::new(Compress::new(level, false))),
            ("gzip", false) => State::Decompress(Box::new(Decompress::new_gzip(WINDOW_BITS))),
            ("deflate", false) => State::Decompress(Box::new(Decompress::new(true))),
            ("deflate-raw", false) => State::Decompress(Box::new(Decompress::new(false))),
            _ => {
                return Err(Exception::throw_type(
                    ctx,
                    &format!(
                        "{what}: unsupported format {format:?} (gzip, deflate and deflate-raw are)"
                    ),
                ))
            }
        };
        live.set(live.get() + 1);
        Ok(Codec {
            state,
            input: Vec::new(),
            pos: 0,
            live,
            what,
        })
    }

    fn release(&mut self) {
        if !matches!(self.state, State::Done) {
            self.state = State::Done;
            self.live.set(self.live.get().saturating_sub(1));
        }
        self.input = Vec::new();
        self.pos = 0;
    }

    fn fail(&mut self, ctx: &Ctx<'_>, msg: &str) -> rquickjs::Error {
        self.release();
        Exception::throw_type(ctx, &format!("{}: {msg}", self.what))
    }
}

impl Drop for Codec {
    fn drop(&mut self) {
        self.release();
    }
}

#[rquickjs::methods]
impl Codec {
    /// Appends a chunk of input (already a byte copy made by the bootstrap, charged to the
    /// isolate before the call).
    pub fn feed<'js>(&mut self, ctx: Ctx<'js>, chunk: TypedArray<'js, u8>) -> Result<()> {
        if matches!(self.state, State::Done) {
            if chunk.is_empty() {
                return Ok(());
            }
            return Err(self.fail(&ctx, "data after the end of the compressed stream"));
        }
        let bytes = chunk
            .as_bytes()
            .ok_or_else(|| Exception::throw_type(&ctx, "the chunk's buffer is detached"))?;
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
        Ok(())
    }

    /// The next piece of output (at most [`OUTPUT_CHUNK`] bytes), or `undefined` when the input fed
    /// so far is used up. `finish`: no more input will come (flush, check for truncation).
    pub fn next<'js>(
        &mut self,
        ctx: Ctx<'js>,
        finish: bool,
    ) -> Result<Option<TypedArray<'js, u8>>> {
        let mut out = Vec::with_capacity(OUTPUT_CHUNK);
        let decompressing = matches!(self.state, State::Decompress(_));
        loop {
            let had = out.len();
            let input = &self.input[self.pos..];
            let step = match &mut self.state {
                State::Done => return Ok(None),
                State::Compress(c) => {
                    let before = c.total_in();
                    let flush = if finish {
                        FlushCompress::Finish
                    } else {
                        FlushCompress::None
                    };
                    c.compress_vec(input, &mut out, flush)
                        .map(|s| (s, c.total_in() - before))
                        .map_err(|_| "compression failed")
                }
                State::Decompress(d) => {
                    let before = d.total_in();
                    d.decompress_vec(input, &mut out, FlushDecompress::None)
                        .map(|s| (s, d.total_in() - before))
                        .map_err(|_| "the compressed data is corrupt")
                }
            };
            let (status, consumed) = match step {
                Ok(v) => v,
                Err(msg) => return Err(self.fail(&ctx, msg)),
            };
            // At most the input's length (a u64 difference of zlib's counters).
            self.pos += usize::try_from(consumed)
                .unwrap_or(usize::MAX)
                .min(input.len());
            if status == Status::StreamEnd {
                if decompressing && self.pos < self.input.len() {
                    return Err(self.fail(&ctx, "data after the end of the compressed stream"));
                }
                self.release();
                break;
            }
            if out.len() == out.capacity() {
                break;
            }
            if consumed == 0 && out.len() == had || self.pos == self.input.len() && !finish {
                // No progress, or the input fed so far is used up.
                if out.is_empty() && finish && decompressing {
                    return Err(self.fail(&ctx, "the compressed data ends early"));
                }
                break;
            }
        }
        if out.is_empty() {
            return Ok(None);
        }
        TypedArray::new(ctx, out).map(Some)
    }

    /// Gives the native state back (the stream was cancelled or errored).
    pub fn close(&mut self) {
        self.release();
    }
}
