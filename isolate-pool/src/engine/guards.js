// The native memory guards (see "native memory guards" in bootstrap.js): what the stubs the
// bootstrap puts on Buffer, Blob, File, TextEncoder, TextDecoder, atob and btoa call. Compiled to
// bytecode by build.rs and loaded the first time a Worker calls one of them (`part("guards")`),
// so that an isolate whose Worker never does pays nothing for this code.
//
// `make` receives the intrinsics and native functions the bootstrap captured before any user code
// ran (this module is evaluated later, when globals and prototypes may have been replaced): it
// uses nothing else.

export default function make(h) {
  const {
    reserve,
    ReflectApply,
    ObjectGetOwnPropertyDescriptor: getOwnDesc,
    ObjectSetPrototypeOf: setProto,
    ObjectDefineProperty: defineProp,
    ObjectFreeze,
    ArrayIsArray: isArray,
    ArrayFrom,
    StringCtor,
    RangeErrorCtor,
    TypeErrorCtor,
    MathTrunc,
    SymbolIterator,
    ViewLength: typedArrayLength,
    ViewBuffer: typedArrayBuffer,
    ViewOffset: typedArrayOffset,
    ArrayBufferByteLength: arrayBufferLength,
    DataViewLength: dataViewLength,
    DataViewBuffer: dataViewBuffer,
    DataViewOffset: dataViewOffset,
    ArrayBufferIsView: isView,
    ObjectToString,
    StringIsWellFormed,
    StringToWellFormed,
    StringReplace,
    StringSlice,
    RegExpExec,
    Uint8ArrayCtor,
    DOMExceptionCtor,
    charCodeAt,
    natives,
  } = h;
  // Buffer's constructor and natives, filled in when a Worker first reads `Buffer` (the
  // bootstrap makes it then): only the stubs it puts on Buffer call the guards that use them.
  const buffer = natives.buffer;
  const {
    BlobSize: blobSize,
    FileSize: fileSize,
    TextEncoderEncode: nativeEncode,
    TextEncoderEncodeInto: nativeEncodeInto,
    TextDecoderDecode: nativeDecode,
    atob: nativeAtob,
    btoa: nativeBtoa,
  } = natives;
  // LLRT's buffer.constants.MAX_LENGTH.
  const MAX_LENGTH = 4294967295;

  const tagOf = (value) => ReflectApply(ObjectToString, value, []);
  // `get` applied to `value`, or -1 if `value` lacks that brand. Callers filter first (isView,
  // the toStringTag), so a throw (slow: it builds a stack) is the exception.
  function brand(get, value) {
    try {
      return ReflectApply(get, value, []);
    } catch {
      return -1;
    }
  }
  const isObject = (value) => value !== null && typeof value === "object";
  // Bytes of a BufferSource (ArrayBuffer or view), or -1.
  function sourceLength(value) {
    if (!isObject(value)) return -1;
    if (isView(value)) {
      const n = brand(typedArrayLength, value);
      return n >= 0 ? n : brand(dataViewLength, value);
    }
    return tagOf(value) === "[object ArrayBuffer]" ? brand(arrayBufferLength, value) : -1;
  }
  // Bytes of a Blob or File, or -1.
  function blobLength(value) {
    if (!isObject(value)) return -1;
    const tag = tagOf(value);
    if (tag === "[object Blob]") return brand(blobSize, value);
    if (tag === "[object File]") return brand(fileSize, value);
    return -1;
  }
  // What a native conversion may copy out of `value`: a string's or an array's length (a sparse
  // array's length too), a BufferSource's bytes.
  function copiedLength(value) {
    if (typeof value === "string" || isArray(value)) return value.length;
    const n = sourceLength(value);
    return n < 0 ? 0 : n;
  }
  // An own, prototype-less array (the native side indexes it; nothing of user code runs).
  function sealedArray() {
    const out = [];
    setProto(out, null);
    return out;
  }
  function put(array, i, value) {
    defineProp(array, i, { __proto__: null, value, writable: true, enumerable: true, configurable: true });
  }
  // Buffer size arguments as Node checks them; then the budget.
  function checkSize(size) {
    if (typeof size !== "number") {
      throw new TypeErrorCtor(
        `The "size" argument must be of type number. Received ${size === null ? "null" : typeof size}`,
      );
    }
    if (!(size >= 0) || size === Infinity) {
      throw new RangeErrorCtor(
        `The value of "size" is out of range. It must be >= 0 && <= ${MAX_LENGTH}. Received ${size}`,
      );
    }
    reserve(size);
    if (size > MAX_LENGTH) {
      throw new RangeErrorCtor(
        `The value of "size" is out of range. It must be >= 0 && <= ${MAX_LENGTH}. Received ${size}`,
      );
    }
    return MathTrunc(size);
  }

  // Buffer
  const zeroed = (n) => ReflectApply(buffer.alloc, buffer.ctor, [n]);
  function alloc(size, fill, encoding) {
    const n = checkSize(size);
    if (arguments.length < 2 || fill === undefined) return zeroed(n);
    if (typeof fill === "string") {
      if (arguments.length > 2 && encoding !== undefined) {
        reserve(fill.length);
        fill = ReflectApply(buffer.from, buffer.ctor, [fill, encoding]);
      } else if (fill.length === 0) {
        return zeroed(n);
      } else {
        return ReflectApply(buffer.alloc, buffer.ctor, [n, fill]);
      }
    }
    // An empty fill fills with zeros (LLRT would divide by zero).
    if (sourceLength(fill) === 0) return zeroed(n);
    return ReflectApply(buffer.alloc, buffer.ctor, [n, fill]);
  }
  function allocUnsafe(size) {
    return zeroed(checkSize(size));
  }
  function from(...args) {
    reserve(copiedLength(args[0]));
    return ReflectApply(buffer.from, buffer.ctor, args);
  }
  function concat(...args) {
    const list = args[0];
    if (!isArray(list)) return ReflectApply(buffer.concat, buffer.ctor, args);
    const items = sealedArray();
    let total = 0;
    const length = list.length;
    for (let i = 0; i < length; i++) {
      const item = list[i];
      const n = sourceLength(item);
      if (n > 0) total += n;
      put(items, i, item);
    }
    const max = args[1];
    if (typeof max === "number" && max >= 0 && max < total) total = max;
    reserve(total);
    args[0] = items;
    return ReflectApply(buffer.concat, buffer.ctor, args);
  }

  // Blob and File: parts become strings, BufferSources and Blobs in a sealed array.
  function blobParts(parts) {
    if (parts === null || typeof parts !== "object") return parts;
    let list;
    if (SymbolIterator in parts) list = ArrayFrom(parts);
    else if (isArray(parts)) list = parts;
    else return parts;
    const out = sealedArray();
    let total = 0;
    const length = list.length;
    for (let i = 0; i < length; i++) {
      let part = list[i];
      let n;
      if (typeof part === "string") {
        n = part.length;
      } else if ((n = blobLength(part)) < 0 && (n = sourceLength(part)) < 0) {
        part = StringCtor(part);
        n = part.length;
      }
      total += n;
      put(out, i, part);
    }
    reserve(total);
    return out;
  }

  // TextEncoder / TextDecoder
  // Lone surrogates become U+FFFD (USVString conversion) instead of a native TypeError.
  function usv(value) {
    const s = StringCtor(value);
    return ReflectApply(StringIsWellFormed, s, []) ? s : ReflectApply(StringToWellFormed, s, []);
  }
  function encode(...args) {
    if (args.length > 0 && args[0] !== undefined) {
      args[0] = usv(args[0]);
      reserve(args[0].length);
    }
    return ReflectApply(nativeEncode, this, args);
  }
  function encodeInto(...args) {
    if (args.length > 0) {
      args[0] = usv(args[0]);
      reserve(args[0].length);
    }
    return ReflectApply(nativeEncodeInto, this, args);
  }
  // The native decoder reads a Uint8Array or an ArrayBuffer: any other view is passed as a
  // Uint8Array over the same bytes.
  function asBytes(value) {
    if (!isView(value) || tagOf(value) === "[object Uint8Array]") return value;
    const length = brand(typedArrayLength, value);
    if (length >= 0) {
      return new Uint8ArrayCtor(ReflectApply(typedArrayBuffer, value, []), ReflectApply(typedArrayOffset, value, []), length);
    }
    return new Uint8ArrayCtor(
      ReflectApply(dataViewBuffer, value, []),
      ReflectApply(dataViewOffset, value, []),
      ReflectApply(dataViewLength, value, []),
    );
  }
  function decode(...args) {
    reserve(copiedLength(args[0]));
    if (args.length > 0) args[0] = asBytes(args[0]);
    return ReflectApply(nativeDecode, this, args);
  }

  // atob / btoa
  // Forgiving-base64 (HTML standard): ASCII whitespace is ignored, padding is optional, and
  // anything else that is not base64 is a DOMException "InvalidCharacterError".
  const ASCII_WHITESPACE = /[\t\n\f\r ]/g;
  const NOT_BASE64 = /[^A-Za-z0-9+/]/;
  function atob(...args) {
    if (args.length === 0) {
      throw new TypeErrorCtor("atob: 1 argument required, but only 0 present");
    }
    let s = StringCtor(args[0]);
    reserve(s.length);
    s = ReflectApply(StringReplace, s, [ASCII_WHITESPACE, ""]);
    if (s.length % 4 === 0 && s.length > 0 && charCodeAt(s, s.length - 1) === 61) {
      s = ReflectApply(StringSlice, s, [0, charCodeAt(s, s.length - 2) === 61 ? -2 : -1]);
    }
    if (s.length % 4 === 1 || ReflectApply(RegExpExec, NOT_BASE64, [s]) !== null) {
      throw new DOMExceptionCtor("atob: the string is not correctly base64-encoded", "InvalidCharacterError");
    }
    while (s.length % 4 !== 0) s += "=";
    return ReflectApply(nativeAtob, undefined, [s]);
  }
  function btoa(...args) {
    if (args.length > 0) {
      args[0] = StringCtor(args[0]);
      reserve(args[0].length * 2);
    }
    return ReflectApply(nativeBtoa, undefined, args);
  }

  return ObjectFreeze({
    __proto__: null,
    alloc,
    allocUnsafe,
    from,
    concat,
    blobParts,
    encode,
    encodeInto,
    decode,
    atob,
    btoa,
  });
}
