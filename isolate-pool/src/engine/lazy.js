// The parts of isogate's Worker-facing JS that only a Worker using them needs: the guards around
// crypto.subtle, TextEncoderStream/TextDecoderStream and CompressionStream/DecompressionStream.
// Compiled to bytecode by build.rs and loaded on first use (bootstrap.js, `lazy()`), so they
// cost an isolate nothing until then. `make` receives the intrinsics the bootstrap captured
// before any user code ran (this module is evaluated later, when globals may be replaced).

export default function make(h) {
  const {
    ReflectApply,
    ArrayBufferByteLength,
    ArrayBufferIsView,
    ArrayPrototype,
    DataViewLength,
    JSONStringify,
    NumberCtor,
    ObjectCreate,
    ObjectDefineProperty,
    ObjectFreeze,
    StringCtor,
    StringSlice,
    StringToUpperCase,
    TypeErrorCtor,
    Uint8ArrayCtor,
    ViewLength,
    charCodeAt,
    chunkBytes,
    DOMExceptionCtor,
  } = h;

  // ---- crypto.subtle guards ---------------------------------------------------------------------
  const MAX_KEY_DATA_BYTES = 16 * 1024;
  const MAX_DERIVED_BITS = 8192;
  const MAX_PBKDF2_ITERATIONS = 1000000;
  const RSA_MODULUS_LENGTHS = [1024, 2048, 3072, 4096];
  /** The byte length of a BufferSource (0 for anything else: the native side rejects it). */
  function bufferSourceLength(value) {
    if (ArrayBufferIsView(value)) {
      try {
        return ReflectApply(ViewLength, value, []);
      } catch {
        return ReflectApply(DataViewLength, value, []);
      }
    }
    try {
      return ReflectApply(ArrayBufferByteLength, value, []);
    } catch {
      return 0;
    }
  }
  function algorithmName(algorithm) {
    if (typeof algorithm === "string") return ReflectApply(StringToUpperCase, algorithm, []);
    if (algorithm !== null && typeof algorithm === "object") {
      const name = algorithm.name;
      if (typeof name === "string") return ReflectApply(StringToUpperCase, name, []);
    }
    return "";
  }
  const ALGORITHM_MEMBERS = [
    "name", "hash", "iterations", "salt", "info", "length", "modulusLength", "publicExponent",
    "namedCurve", "iv", "counter", "additionalData", "tagLength", "label", "saltLength", "public",
  ];
  /**
   * An algorithm dictionary read once (each member by [[Get]], as WebIDL does) into a plain
   * object: what the guards check is what the native side gets (no getter can change it between).
   */
  function algorithmOf(algorithm) {
    if (algorithm === null || typeof algorithm !== "object") return algorithm;
    const out = {};
    for (let i = 0; i < ALGORITHM_MEMBERS.length; i++) {
      const key = ALGORITHM_MEMBERS[i];
      const v = algorithm[key];
      if (v !== undefined) out[key] = key === "hash" ? algorithmOf(v) : v;
    }
    return out;
  }
  function refuse(message) {
    return new DOMExceptionCtor(`crypto.subtle: ${message}`, "OperationError");
  }
  /**
   * A SubtleCrypto whose methods check what they are asked before LLRT's native functions run
   * (which take no receiver). Each check reads the value once and passes on what it checked.
   */
  function guardedSubtle(native, SubtleCryptoCtor, reserve) {
    const methods = { __proto__: null };
    const call = (name, args) => ReflectApply(native[name], undefined, args);
    const charge = (data) => reserve(bufferSourceLength(data));
    const checkDerived = (algorithm, bits) => {
      const name = algorithmName(algorithm);
      if (name === "PBKDF2") {
        const iterations = NumberCtor(algorithm.iterations);
        if (!(iterations >= 1 && iterations <= MAX_PBKDF2_ITERATIONS)) {
          throw refuse(`PBKDF2 iterations must be between 1 and ${MAX_PBKDF2_ITERATIONS}`);
        }
      }
      if (bits !== undefined && bits !== null && !(NumberCtor(bits) <= MAX_DERIVED_BITS)) {
        throw refuse(`at most ${MAX_DERIVED_BITS} bits may be derived`);
      }
    };
    const checkKeyLength = (algorithm) => {
      if (algorithm === null || typeof algorithm !== "object") return;
      const name = algorithmName(algorithm);
      if (name.startsWith("RSA")) {
        const n = NumberCtor(algorithm.modulusLength);
        if (ReflectApply(ArrayPrototype.indexOf, RSA_MODULUS_LENGTHS, [n]) === -1) {
          throw refuse("RSA modulusLength must be 1024, 2048, 3072 or 4096");
        }
      }
      if (algorithm.length !== undefined && !(NumberCtor(algorithm.length) <= MAX_DERIVED_BITS)) {
        throw refuse(`a key may have at most ${MAX_DERIVED_BITS} bits`);
      }
    };
    const checkImported = (key) => {
      const algorithm = key && key.algorithm;
      if (algorithm && NumberCtor(algorithm.modulusLength) > 4096) {
        throw refuse("RSA keys of more than 4096 bits are not supported");
      }
      return key;
    };
    const checkKeyData = (format, keyData) => {
      let size = bufferSourceLength(keyData);
      if (format === "jwk" && keyData !== null && typeof keyData === "object") {
        size = JSONStringify(keyData).length;
      }
      if (size > MAX_KEY_DATA_BYTES) throw refuse(`key data of more than ${MAX_KEY_DATA_BYTES} bytes`);
      reserve(size);
    };
    methods.digest = async function digest(algorithm, data) {
      algorithm = algorithmOf(algorithm);
      charge(data);
      return call("digest", [algorithm, data]);
    };
    for (const name of ["encrypt", "decrypt"]) {
      methods[name] = { async [name](algorithm, key, data) {
        algorithm = algorithmOf(algorithm);
        charge(data);
        return call(name, [algorithm, key, data]);
      } }[name];
    }
    methods.sign = async function sign(algorithm, key, data) {
      algorithm = algorithmOf(algorithm);
      charge(data);
      return call("sign", [algorithm, key, data]);
    };
    methods.verify = async function verify(algorithm, key, signature, data) {
      algorithm = algorithmOf(algorithm);
      charge(data);
      charge(signature);
      return call("verify", [algorithm, key, signature, data]);
    };
    methods.generateKey = async function generateKey(algorithm, extractable, keyUsages) {
      algorithm = algorithmOf(algorithm);
      checkKeyLength(algorithm);
      return call("generateKey", [algorithm, extractable, keyUsages]);
    };
    methods.importKey = async function importKey(format, keyData, algorithm, extractable, keyUsages) {
      algorithm = algorithmOf(algorithm);
      checkKeyData(format, keyData);
      // An imported RSA key's size is known only after the import (checkImported).
      if (algorithm !== null && typeof algorithm === "object") checkKeyLength({ length: algorithm.length });
      return checkImported(await call("importKey", [format, keyData, algorithm, extractable, keyUsages]));
    };
    methods.exportKey = async function exportKey(format, key) {
      return call("exportKey", [format, key]);
    };
    methods.deriveBits = async function deriveBits(algorithm, baseKey, length) {
      algorithm = algorithmOf(algorithm);
      length = length === undefined || length === null ? length : NumberCtor(length);
      checkDerived(algorithm, length);
      return call("deriveBits", [algorithm, baseKey, length]);
    };
    methods.deriveKey = async function deriveKey(algorithm, baseKey, derivedKeyType, extractable, keyUsages) {
      algorithm = algorithmOf(algorithm);
      derivedKeyType = algorithmOf(derivedKeyType);
      checkDerived(algorithm, undefined);
      checkKeyLength(derivedKeyType);
      return call("deriveKey", [algorithm, baseKey, derivedKeyType, extractable, keyUsages]);
    };
    methods.wrapKey = async function wrapKey(format, key, wrappingKey, wrapAlgorithm) {
      return call("wrapKey", [format, key, wrappingKey, algorithmOf(wrapAlgorithm)]);
    };
    methods.unwrapKey = async function unwrapKey(format, wrappedKey, unwrappingKey, unwrapAlgorithm, unwrappedKeyAlgorithm, extractable, keyUsages) {
      unwrapAlgorithm = algorithmOf(unwrapAlgorithm);
      unwrappedKeyAlgorithm = algorithmOf(unwrappedKeyAlgorithm);
      charge(wrappedKey);
      if (bufferSourceLength(wrappedKey) > MAX_KEY_DATA_BYTES) throw refuse(`key data of more than ${MAX_KEY_DATA_BYTES} bytes`);
      if (unwrappedKeyAlgorithm !== null && typeof unwrappedKeyAlgorithm === "object") checkKeyLength({ length: unwrappedKeyAlgorithm.length });
      return checkImported(await call("unwrapKey", [format, wrappedKey, unwrappingKey, unwrapAlgorithm, unwrappedKeyAlgorithm, extractable, keyUsages]));
    };
    const subtle = ObjectCreate(SubtleCryptoCtor.prototype);
    for (const name in methods) {
      ObjectDefineProperty(subtle, name, { __proto__: null, value: methods[name], writable: true, enumerable: true, configurable: true });
    }
    return ObjectFreeze(subtle);
  }

  /** TextEncoderStream per the Encoding standard: UTF-8, a lone surrogate split across chunks kept. */
  function textEncoderStream(g, TS) {
    const encoder = new g.TextEncoder();
    const encode = g.TextEncoder.prototype.encode;
    class TextEncoderStream {
      #stream;
      constructor() {
        let pending = "";
        this.#stream = new TS({
          transform(chunk, controller) {
            let s = pending + StringCtor(chunk);
            pending = "";
            const last = s.length > 0 ? charCodeAt(s, s.length - 1) : 0;
            if (last >= 0xd800 && last <= 0xdbff) {
              pending = ReflectApply(StringSlice, s, [s.length - 1]);
              s = ReflectApply(StringSlice, s, [0, s.length - 1]);
            }
            if (s.length > 0) controller.enqueue(ReflectApply(encode, encoder, [s]));
          },
          flush(controller) {
            if (pending !== "") controller.enqueue(new Uint8ArrayCtor([0xef, 0xbf, 0xbd]));
          },
        });
      }
      get encoding() {
        this.#stream;
        return "utf-8";
      }
      get readable() {
        return this.#stream.readable;
      }
      get writable() {
        return this.#stream.writable;
      }
    }
    return TextEncoderStream;
  }

  /**
   * CompressionStream / DecompressionStream per the Compression standard, over a native codec
   * (engine/codec.rs: bounded output per call, native state given back at the end). Each chunk
   * must be a BufferSource; it is copied (charged first) into the codec.
   */
  function compressionStream(TS, makeCodec, reserve, compress) {
    const what = compress ? "CompressionStream" : "DecompressionStream";
    const FORMATS = ["gzip", "deflate", "deflate-raw"];
    function drain(codec, controller, finish) {
      for (;;) {
        const out = codec.next(finish);
        if (out === undefined) return;
        controller.enqueue(out);
      }
    }
    const cls = {
      [what]: class {
        #stream;
        constructor(format) {
          if (arguments.length < 1) throw new TypeErrorCtor(`${what}: a format is required`);
          const f = StringCtor(format);
          if (ReflectApply(ArrayPrototype.indexOf, FORMATS, [f]) === -1) {
            throw new TypeErrorCtor(`${what}: unsupported format ${JSONStringify(f)} (gzip, deflate and deflate-raw are)`);
          }
          const codec = makeCodec(f, compress);
          this.#stream = new TS({
            transform(chunk, controller) {
              let bytes;
              try {
                bytes = chunkBytes(chunk, what);
              } catch (e) {
                codec.close();
                throw e;
              }
              reserve(bytes.length);
              codec.feed(new Uint8ArrayCtor(bytes));
              drain(codec, controller, false);
            },
            flush(controller) {
              drain(codec, controller, true);
            },
            cancel() {
              codec.close();
            },
          });
        }
        get readable() {
          return this.#stream.readable;
        }
        get writable() {
          return this.#stream.writable;
        }
      },
    };
    return cls[what];
  }

  /** TextDecoderStream per the Encoding standard, over TextDecoder's streaming decode. */
  function textDecoderStream(g, TS) {
    const TextDecoderCtor = g.TextDecoder;
    const decode = TextDecoderCtor.prototype.decode;
    const STREAM = ObjectFreeze({ __proto__: null, stream: true });
    class TextDecoderStream {
      #decoder;
      #stream;
      constructor(label = "utf-8", options = undefined) {
        const decoder = new TextDecoderCtor(label, options);
        this.#decoder = decoder;
        this.#stream = new TS({
          transform(chunk, controller) {
            if (!ArrayBufferIsView(chunk)) {
              try {
                ReflectApply(ArrayBufferByteLength, chunk, []);
              } catch {
                throw new TypeErrorCtor("TextDecoderStream: a chunk must be an ArrayBuffer or a view");
              }
            }
            const s = ReflectApply(decode, decoder, [chunk, STREAM]);
            if (s !== "") controller.enqueue(s);
          },
          flush(controller) {
            const s = ReflectApply(decode, decoder, []);
            if (s !== "") controller.enqueue(s);
          },
        });
      }
      get encoding() {
        return this.#decoder.encoding;
      }
      get fatal() {
        return this.#decoder.fatal;
      }
      get ignoreBOM() {
        return this.#decoder.ignoreBOM;
      }
      get readable() {
        return this.#stream.readable;
      }
      get writable() {
        return this.#stream.writable;
      }
    }
    return TextDecoderStream;
  }

  return ObjectFreeze({ guardedSubtle, textEncoderStream, textDecoderStream, compressionStream });
}
