//! `TextDecoder` over `encoding_rs` (the WHATWG Encoding standard's decoders, as Firefox uses
//! them): every encoding the standard names, `fatal`, `ignoreBOM` and streaming
//! (`decode(bytes, { stream: true })` keeps a split sequence for the next call). It replaces
//! LLRT's, which knows UTF-8/UTF-16 only and has no streaming. The bootstrap's memory guard
//! charges the input's size before each call; the output is a Rust allocation on the isolate's
//! account, at most `max_utf8_buffer_length` of the input.

use rquickjs::atom::PredefinedAtom;
use rquickjs::function::Opt;
use rquickjs::{ArrayBuffer, Coerced, Ctx, Exception, Object, Result, TypedArray, Value};

#[rquickjs::class(rename = "TextDecoder")]
#[derive(rquickjs::class::Trace, rquickjs::JsLifetime)]
pub struct TextDecoder {
    #[qjs(skip_trace)]
    encoding: &'static encoding_rs::Encoding,
    /// The decoder of a stream in progress (`stream: true`), else `None`.
    #[qjs(skip_trace)]
    decoder: Option<encoding_rs::Decoder>,
    fatal: bool,
    ignore_bom: bool,
}

fn flag<'js>(options: &Option<Object<'js>>, name: &str) -> Result<bool> {
    match options {
        Some(o) => Ok(o.get::<_, Coerced<bool>>(name)?.0),
        None => Ok(false),
    }
}

/// A WebIDL optional dictionary argument: undefined/null are "not given", anything else must
/// be an object (a TypeError naming `what` otherwise). Used by every host function taking one.
pub(super) fn dictionary<'js>(
    ctx: &Ctx<'js>,
    value: Opt<Value<'js>>,
    what: &str,
) -> Result<Option<Object<'js>>> {
    match value.0 {
        None => Ok(None),
        Some(v) if v.is_undefined() || v.is_null() => Ok(None),
        Some(v) => match v.into_object() {
            Some(o) => Ok(Some(o)),
            None => Err(Exception::throw_type(
                ctx,
                &format!("{what}: options must be an object"),
            )),
        },
    }
}

#[rquickjs::methods]
impl<'js> TextDecoder {
    #[qjs(constructor)]
    pub fn new(ctx: Ctx<'js>, label: Opt<Value<'js>>, options: Opt<Value<'js>>) -> Result<Self> {
        let label = match label.0 {
            Some(v) if !v.is_undefined() => v.get::<Coerced<String>>()?.0,
            _ => "utf-8".to_string(),
        };
        let encoding = encoding_rs::Encoding::for_label_no_replacement(label.as_bytes())
            .ok_or_else(|| {
                Exception::throw_range(
                    &ctx,
                    &format!("TextDecoder: {label:?} is not a supported encoding label"),
                )
            })?;
        let options = dictionary(&ctx, options, "TextDecoder")?;
        Ok(TextDecoder {
            encoding,
            decoder: None,
            fatal: flag(&options, "fatal")?,
            ignore_bom: flag(&options, "ignoreBOM")?,
        })
    }

    #[qjs(get)]
    fn encoding(&self) -> String {
        self.encoding.name().to_ascii_lowercase()
    }

    #[qjs(get)]
    fn fatal(&self) -> bool {
        self.fatal
    }

    #[qjs(get, rename = "ignoreBOM")]
    fn ignore_bom(&self) -> bool {
        self.ignore_bom
    }

    #[qjs(get, rename = PredefinedAtom::SymbolToStringTag)]
    fn to_string_tag(&self) -> &'static str {
        "TextDecoder"
    }

    pub fn decode(
        &mut self,
        ctx: Ctx<'js>,
        input: Opt<Value<'js>>,
        options: Opt<Value<'js>>,
    ) -> Result<String> {
        let options = dictionary(&ctx, options, "TextDecoder.decode")?;
        let stream = flag(&options, "stream")?;
        let input = input.0.filter(|v| !v.is_undefined());
        let holder;
        let buffer;
        let bytes: &[u8] = match &input {
            None => &[],
            Some(v) => {
                if let Ok(view) = TypedArray::<u8>::from_value(v.clone()) {
                    holder = view;
                    holder.as_bytes().unwrap_or(&[])
                } else if let Some(b) = v
                    .as_object()
                    .and_then(|o| ArrayBuffer::from_object(o.clone()))
                {
                    buffer = b;
                    buffer.as_bytes().unwrap_or(&[])
                } else {
                    return Err(Exception::throw_type(
                        &ctx,
                        "TextDecoder.decode: the input must be an ArrayBuffer or an ArrayBuffer view",
                    ));
                }
            }
        };
        let encoding = self.encoding;
        let ignore_bom = self.ignore_bom;
        let decoder = self.decoder.get_or_insert_with(|| {
            if ignore_bom {
                encoding.new_decoder_without_bom_handling()
            } else {
                encoding.new_decoder_with_bom_removal()
            }
        });
        let last = !stream;
        let result = if self.fatal {
            let capacity = decoder
                .max_utf8_buffer_length_without_replacement(bytes.len())
                .ok_or_else(|| {
                    Exception::throw_range(&ctx, "TextDecoder.decode: input too large")
                })?;
            let mut out = String::with_capacity(capacity);
            match decoder.decode_to_string_without_replacement(bytes, &mut out, last) {
                (encoding_rs::DecoderResult::InputEmpty, _) => Ok(out),
                (encoding_rs::DecoderResult::Malformed(..), _) => Err(()),
                // The capacity is the decoder's own worst case: not reached.
                (encoding_rs::DecoderResult::OutputFull, _) => Err(()),
            }
        } else {
            let capacity = decoder.max_utf8_buffer_length(bytes.len()).ok_or_else(|| {
                Exception::throw_range(&ctx, "TextDecoder.decode: input too large")
            })?;
            let mut out = String::with_capacity(capacity);
            let (_, _, _) = decoder.decode_to_string(bytes, &mut out, last);
            Ok(out)
        };
        if last || result.is_err() {
            self.decoder = None;
        }
        result.map_err(|()| {
            Exception::throw_type(
                &ctx,
                &format!(
                    "TextDecoder.decode: the input is not valid {}",
                    self.encoding.name()
                ),
            )
        })
    }
}
