// The parts of isogate's Worker-facing JS that only a Worker using them needs: the guards around
// crypto.subtle, TextEncoderStream/TextDecoderStream, CompressionStream/DecompressionStream,
// structuredClone and the CallSites a Worker's Error.prepareStackTrace gets.
// Compiled to bytecode by build.rs and loaded on first use (bootstrap.js, `part("lazy")`), so they
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
    DOMExceptionCtor,
    ErrorCtor,
    ReflectOwnKeys,
    SymbolToStringTag,
    WeakMapCtor,
    WeakMapGet,
    WeakMapSet,
    defineMethod,
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
   * must be a BufferSource (`chunkBytes`, bodies.js); it is copied (charged first) into the codec.
   */
  function compressionStream(TS, makeCodec, reserve, compress, chunkBytes) {
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


  // structuredClone per the HTML standard (see bootstrap.js, "structuredClone"): made on the first
  // call, from the globals of that moment (`g`).
  function structuredCloneFor(g) {
    const { ObjectGetOwnPropertyDescriptor, ObjectGetPrototypeOf, ObjectPrototype, MapCtor, MapGet, MapSet, push, hasBrand } = h;
      const ArrayBufferCtor = ArrayBuffer;
      const abProto = ArrayBufferCtor.prototype;
      const abGetter = (name) => ObjectGetOwnPropertyDescriptor(abProto, name).get;
      const abByteLength = abGetter("byteLength");
      const abResizable = abGetter("resizable");
      const abMaxByteLength = abGetter("maxByteLength");
      const abSlice = abProto.slice;
      const abTransfer = abProto.transfer;
      const DateCtor = Date;
      const dateGetTime = Date.prototype.getTime;
      const RegExpCtor = RegExp;
      const regexpSource = ObjectGetOwnPropertyDescriptor(RegExp.prototype, "source").get;
      const regexpFlags = ObjectGetOwnPropertyDescriptor(RegExp.prototype, "flags").get;
      const MapCtor2 = Map;
      const mapForEach = Map.prototype.forEach;
      const mapSize = ObjectGetOwnPropertyDescriptor(Map.prototype, "size").get;
      const SetCtor2 = Set;
      const setAdd = Set.prototype.add;
      const setForEach = Set.prototype.forEach;
      const setSize = ObjectGetOwnPropertyDescriptor(Set.prototype, "size").get;
      const booleanValueOf = Boolean.prototype.valueOf;
      const numberValueOf = Number.prototype.valueOf;
      const stringValueOf = String.prototype.valueOf;
      const bigintValueOf = typeof BigInt === "function" ? BigInt.prototype.valueOf : null;
      const ObjectCtor = Object;
      const ArrayIsArray = Array.isArray;
      const ObjectKeys = Object.keys;
      const DataViewCtor = DataView;
      const ErrorCtors = { __proto__: null, Error, EvalError, RangeError, ReferenceError, SyntaxError, TypeError, URIError };
      const errorToString = Object.prototype.toString;
      const BlobCtor = g.Blob;
      const FileCtor = g.File;
      const blobSize = ObjectGetOwnPropertyDescriptor(BlobCtor.prototype, "size").get;
      const blobType = ObjectGetOwnPropertyDescriptor(BlobCtor.prototype, "type").get;
      const blobSlice = BlobCtor.prototype.slice;
      const fileProto = FileCtor.prototype;
      const fileName = ObjectGetOwnPropertyDescriptor(fileProto, "name").get;
      const fileLastModified = ObjectGetOwnPropertyDescriptor(fileProto, "lastModified").get;
      const fileSlice = fileProto.slice;
      const fileSize = ObjectGetOwnPropertyDescriptor(fileProto, "size").get;
      const fileType = ObjectGetOwnPropertyDescriptor(fileProto, "type").get;
      const TypedArrayProto = ObjectGetPrototypeOf(Uint8Array.prototype);
      const taBuffer = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "buffer").get;
      const taOffset = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "byteOffset").get;
      const taLength = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "length").get;
      const taTag = ObjectGetOwnPropertyDescriptor(TypedArrayProto, Symbol.toStringTag).get;
      const dvBuffer = ObjectGetOwnPropertyDescriptor(DataView.prototype, "buffer").get;
      const dvOffset = ObjectGetOwnPropertyDescriptor(DataView.prototype, "byteOffset").get;
      const dvLength = ObjectGetOwnPropertyDescriptor(DataView.prototype, "byteLength").get;
      const typedArrays = { __proto__: null };
      for (const name of ["Int8Array", "Uint8Array", "Uint8ClampedArray", "Int16Array", "Uint16Array", "Int32Array",
        "Uint32Array", "Float16Array", "Float32Array", "Float64Array", "BigInt64Array", "BigUint64Array"]) {
        if (typeof g[name] === "function") typedArrays[name] = g[name];
      }
      const cloneError = (what) => new DOMExceptionCtor(`structuredClone: ${what} could not be cloned`, "DataCloneError");
      // Brand checks: each getter throws for other objects.
      const is = hasBrand;
      function cloneBuffer(buffer) {
        const len = ReflectApply(abByteLength, buffer, []);
        if (ReflectApply(abResizable, buffer, [])) {
          const out = new ArrayBufferCtor(len, { maxByteLength: ReflectApply(abMaxByteLength, buffer, []) });
          new Uint8ArrayCtor(out).set(new Uint8ArrayCtor(buffer));
          return out;
        }
        return ReflectApply(abSlice, buffer, [0, len]);
      }
      function clone(value, memory) {
        if (value === null || (typeof value !== "object" && typeof value !== "function")) {
          if (typeof value === "symbol") throw cloneError("a Symbol");
          return value;
        }
        if (typeof value === "function") throw cloneError("a function");
        const seen = ReflectApply(MapGet, memory, [value]);
        if (seen !== undefined) return seen;
        const remember = (out) => {
          ReflectApply(MapSet, memory, [value, out]);
          return out;
        };
        if (is(booleanValueOf, value)) return remember(ObjectCtor(ReflectApply(booleanValueOf, value, [])));
        if (is(numberValueOf, value)) return remember(ObjectCtor(ReflectApply(numberValueOf, value, [])));
        if (is(stringValueOf, value)) return remember(ObjectCtor(ReflectApply(stringValueOf, value, [])));
        if (bigintValueOf !== null && is(bigintValueOf, value)) return remember(ObjectCtor(ReflectApply(bigintValueOf, value, [])));
        if (is(dateGetTime, value)) return remember(new DateCtor(ReflectApply(dateGetTime, value, [])));
        if (is(regexpFlags, value) && is(regexpSource, value) && value instanceof RegExpCtor) {
          return remember(new RegExpCtor(ReflectApply(regexpSource, value, []), ReflectApply(regexpFlags, value, [])));
        }
        if (is(abByteLength, value)) return remember(cloneBuffer(value));
        if (is(taTag, value) && ReflectApply(taTag, value, []) !== undefined) {
          const Ctor = typedArrays[ReflectApply(taTag, value, [])];
          const buffer = clone(ReflectApply(taBuffer, value, []), memory);
          return remember(new Ctor(buffer, ReflectApply(taOffset, value, []), ReflectApply(taLength, value, [])));
        }
        if (is(dvBuffer, value)) {
          let offset;
          let length;
          try {
            offset = ReflectApply(dvOffset, value, []);
            length = ReflectApply(dvLength, value, []);
          } catch {
            throw cloneError("a DataView out of its buffer's bounds");
          }
          const buffer = clone(ReflectApply(dvBuffer, value, []), memory);
          return remember(new DataViewCtor(buffer, offset, length));
        }
        if (is(fileName, value)) {
          const bytes = ReflectApply(fileSlice, value, [0, ReflectApply(fileSize, value, [])]);
          return remember(new FileCtor([bytes], ReflectApply(fileName, value, []), {
            type: ReflectApply(fileType, value, []),
            lastModified: ReflectApply(fileLastModified, value, []),
          }));
        }
        if (is(blobSize, value)) {
          return remember(ReflectApply(blobSlice, value, [0, ReflectApply(blobSize, value, []), ReflectApply(blobType, value, [])]));
        }
        if (is(mapSize, value)) {
          const out = remember(new MapCtor2());
          const entries = [];
          ReflectApply(mapForEach, value, [(v, k) => push(entries, [k, v])]);
          for (let i = 0; i < entries.length; i++) {
            ReflectApply(MapSet, out, [clone(entries[i][0], memory), clone(entries[i][1], memory)]);
          }
          return out;
        }
        if (is(setSize, value)) {
          const out = remember(new SetCtor2());
          const items = [];
          ReflectApply(setForEach, value, [(v) => push(items, v)]);
          for (let i = 0; i < items.length; i++) ReflectApply(setAdd, out, [clone(items[i], memory)]);
          return out;
        }
        const tag = ReflectApply(errorToString, value, []);
        if (tag === "[object Error]") {
          let name = value.name;
          const Ctor = typeof name === "string" && ErrorCtors[name] !== undefined ? ErrorCtors[name] : ErrorCtors.Error;
          // The message only if the error has its own (an inherited "" is no message).
          const own = ObjectGetOwnPropertyDescriptor(value, "message");
          const message = own !== undefined && "value" in own ? own.value : undefined;
          const out = remember(message === undefined ? new Ctor() : new Ctor(StringCtor(message)));
          const stack = value.stack;
          if (typeof stack === "string") ObjectDefineProperty(out, "stack", { __proto__: null, value: stack, writable: true, configurable: true });
          return out;
        }
        if (ArrayIsArray(value)) {
          const out = remember(new Array(value.length));
          const keys = ObjectKeys(value);
          for (let i = 0; i < keys.length; i++) out[keys[i]] = clone(value[keys[i]], memory);
          return out;
        }
        if (tag !== "[object Object]" || isPlatformObject(value)) throw cloneError(`a ${tag.slice(8, -1)}`);
        const out = remember({});
        const keys = ObjectKeys(value);
        for (let i = 0; i < keys.length; i++) out[keys[i]] = clone(value[keys[i]], memory);
        return out;
      }
      // Objects of the runtime's own classes (Request, Headers, EventTarget, ...) are not
      // serializable; Promise/WeakMap/WeakSet/Proxy-less ordinary objects are told by their tag.
      function isPlatformObject(value) {
        const proto = ObjectGetPrototypeOf(value);
        return proto !== null && proto !== ObjectPrototype && typeof value[Symbol.toStringTag] === "string";
      }
      return function structuredClone(value, options) {
        if (arguments.length === 0) throw new TypeErrorCtor("structuredClone: 1 argument required, but only 0 present");
        if (options !== undefined && options !== null && typeof options !== "object" && typeof options !== "function") {
          throw new TypeErrorCtor("structuredClone: options must be an object");
        }
        const memory = new MapCtor();
        const transfer = options === undefined || options === null ? undefined : options.transfer;
        const list = [];
        if (transfer !== undefined) {
          for (const item of transfer) push(list, item);
          for (let i = 0; i < list.length; i++) {
            if (!is(abByteLength, list[i])) throw cloneError("a transfer list item that is not an ArrayBuffer");
            for (let j = 0; j < i; j++) if (list[j] === list[i]) throw cloneError("a transfer list with duplicates");
            ReflectApply(MapSet, memory, [list[i], cloneBuffer(list[i])]);
          }
        }
        const out = clone(value, memory);
        // Then the transfer: a resizable buffer (always QuickJS's own memory) is detached; a
        // fixed-length one is left as is (see ArrayBuffer.prototype.transfer above).
        for (let i = 0; i < list.length; i++) {
          if (ReflectApply(abResizable, list[i], [])) ReflectApply(abTransfer, list[i], []);
        }
        return out;
      };
  }

  // ---- Error.prepareStackTrace ------------------------------------------------------------------
  /**
   * The function the native prepareStackTrace slot holds while the Worker has set one (see
   * installStackTraceGuard in bootstrap.js): it passes `userPrepare()` CallSite-like objects that
   * expose names and positions, never a function or a receiver.
   */
  function makeSanitize(nativeSet, limit, userPrepare) {
    const { ObjectGetPrototypeOf, push } = h;
    // One real CallSite, to read its methods (with the native limit at 10 for the probe, whatever
    // the Worker set it to).
    let site = null;
    const savedLimit = limit ? ReflectApply(limit.get, ErrorCtor, []) : undefined;
    if (limit) ReflectApply(limit.set, ErrorCtor, [10]);
    ReflectApply(nativeSet, ErrorCtor, [
      (_e, sites) => {
        site = sites.length ? sites[0] : null;
        return "";
      },
    ]);
    try {
      new ErrorCtor("probe").stack;
    } finally {
      ReflectApply(nativeSet, ErrorCtor, [undefined]);
      if (limit) ReflectApply(limit.set, ErrorCtor, [savedLimit]);
    }
    if (site === null) throw new TypeErrorCtor("Error.prepareStackTrace is not available");
    const siteProto = ObjectGetPrototypeOf(site);
    const getFileName = siteProto.getFileName;
    const getFunctionName = siteProto.getFunctionName;
    const getLineNumber = siteProto.getLineNumber;
    const getColumnNumber = siteProto.getColumnNumber;
    const isNative = siteProto.isNative;
    site = null;
    const fields = new WeakMapCtor();
    const field = (cs) => ReflectApply(WeakMapGet, fields, [cs]);
    const SafeCallSite = ObjectCreate(null);
    const methods = {
      getFileName() { const f = field(this); return f ? f.file : null; },
      getFunctionName() { const f = field(this); return f ? f.name : null; },
      getMethodName() { return null; },
      getTypeName() { return null; },
      getLineNumber() { const f = field(this); return f ? f.line : null; },
      getColumnNumber() { const f = field(this); return f ? f.column : null; },
      getScriptNameOrSourceURL() { const f = field(this); return f ? f.file : null; },
      getEvalOrigin() { return undefined; },
      getFunction() { return undefined; },
      getThis() { return undefined; },
      getPromiseIndex() { return null; },
      isNative() { const f = field(this); return f ? f.native : false; },
      isToplevel() { return false; },
      isEval() { return false; },
      isConstructor() { return false; },
      isAsync() { return false; },
      isPromiseAll() { return false; },
      toString() {
        const f = field(this);
        if (!f) return "<unknown>";
        const where = f.native ? "native" : `${f.file}:${f.line}:${f.column}`;
        return f.name ? `${f.name} (${where})` : where;
      },
    };
    for (const key of ReflectOwnKeys(methods)) defineMethod(SafeCallSite, key, methods[key]);
    ObjectDefineProperty(SafeCallSite, SymbolToStringTag, { __proto__: null, value: "CallSite", configurable: true });
    ObjectFreeze(SafeCallSite);
    return function sanitize(error, sites) {
      const user = userPrepare();
      const safe = [];
      for (let i = 0; i < sites.length; i++) {
        const cs = sites[i];
        const entry = ObjectFreeze(ObjectCreate(SafeCallSite));
        ReflectApply(WeakMapSet, fields, [
          entry,
          {
            __proto__: null,
            file: ReflectApply(getFileName, cs, []),
            name: ReflectApply(getFunctionName, cs, []),
            line: ReflectApply(getLineNumber, cs, []),
            column: ReflectApply(getColumnNumber, cs, []),
            native: ReflectApply(isNative, cs, []),
          },
        ]);
        push(safe, entry);
      }
      return ReflectApply(user, ErrorCtor, [error, safe]);
    };
  }

  return ObjectFreeze({
    guardedSubtle, textEncoderStream, textDecoderStream, compressionStream, structuredCloneFor,
    makeSanitize,
  });
}
