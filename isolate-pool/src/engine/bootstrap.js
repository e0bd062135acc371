// isogate's Worker-facing glue. Compiled to QuickJS bytecode at build time (build.rs) and loaded
// into every isolate after the LLRT Web API modules are initialised.
//
// `install(host)` receives the host calls as arguments and keeps them in closures: nothing it is
// given is reachable from user code afterwards. It returns the internal entry points the engine
// calls (dispatch, execute, ...), which are likewise never put on the global object.

export function install(host) {
  const g = globalThis;
  const { sleep, fetch: hostFetch, randomBytes } = host;
  const TypeErrorCtor = TypeError;
  const PromiseCtor = Promise;

  // ---- native memory guards ---------------------------------------------------------------
  // LLRT keeps the bytes of Buffer, Blob, File, TextEncoder/TextDecoder and atob/btoa in Rust
  // allocations, which cannot fail gracefully (a refused allocation aborts the process). Every
  // size that user code hands to one of them is checked against the invocation's remaining
  // memory budget before the native call: `reserve(bytes)` throws a RangeError and fails the
  // invocation with `memory_limit` (even if the JS catches it). Sizes are read with the built-in
  // getters captured here, so user code cannot make a value lie about its size, and the parts of
  // a Blob/File or the list of Buffer.concat are copied into a prototype-less array, so the
  // native side reads exactly what was measured. Strings count one byte per UTF-16 unit; the
  // allocator's accounting (engine/memory.rs) charges the exact bytes afterwards.
  // Buffer.allocUnsafe/allocUnsafeSlow return zero-filled memory.
  {
    const reserve = host.reserve;
    const ReflectApply = Reflect.apply;
    const ReflectConstruct = Reflect.construct;
    const ReflectOwnKeys = Reflect.ownKeys;
    const getOwnDesc = Object.getOwnPropertyDescriptor;
    const getProto = Object.getPrototypeOf;
    const setProto = Object.setPrototypeOf;
    const defineProp = Object.defineProperty;
    const isArray = Array.isArray;
    const ArrayFrom = Array.from;
    const StringCtor = String;
    const RangeErrorCtor = RangeError;
    const MathTrunc = Math.trunc;
    const SymbolIterator = Symbol.iterator;
    // LLRT's buffer.constants.MAX_LENGTH.
    const MAX_LENGTH = 4294967295;

    const getter = (proto, name) => getOwnDesc(proto, name).get;
    const typedArrayLength = getter(getProto(Uint8Array.prototype), "byteLength");
    const arrayBufferLength = getter(ArrayBuffer.prototype, "byteLength");
    const dataViewLength = getter(DataView.prototype, "byteLength");
    const NativeBlob = g.Blob;
    const NativeFile = g.File;
    const blobSize = getter(NativeBlob.prototype, "size");
    const fileSize = getter(NativeFile.prototype, "size");

    const isView = ArrayBuffer.isView;
    const ObjectToString = Object.prototype.toString;
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
      defineProp(array, i, { value, writable: true, enumerable: true, configurable: true });
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
    function replaceValue(object, name, value) {
      const desc = getOwnDesc(object, name);
      desc.value = value;
      defineProp(object, name, desc);
    }

    // Buffer
    const BufferCtor = g.Buffer;
    const nativeAlloc = BufferCtor.alloc;
    const nativeFrom = BufferCtor.from;
    const nativeConcat = BufferCtor.concat;
    const zeroed = (n) => ReflectApply(nativeAlloc, BufferCtor, [n]);
    replaceValue(BufferCtor, "alloc", function alloc(size, fill, encoding) {
      const n = checkSize(size);
      if (arguments.length < 2 || fill === undefined) return zeroed(n);
      if (typeof fill === "string") {
        if (arguments.length > 2 && encoding !== undefined) {
          reserve(fill.length);
          fill = ReflectApply(nativeFrom, BufferCtor, [fill, encoding]);
        } else if (fill.length === 0) {
          return zeroed(n);
        } else {
          return ReflectApply(nativeAlloc, BufferCtor, [n, fill]);
        }
      }
      // An empty fill fills with zeros (LLRT would divide by zero).
      if (sourceLength(fill) === 0) return zeroed(n);
      return ReflectApply(nativeAlloc, BufferCtor, [n, fill]);
    });
    replaceValue(BufferCtor, "allocUnsafe", function allocUnsafe(size) {
      return zeroed(checkSize(size));
    });
    replaceValue(BufferCtor, "allocUnsafeSlow", function allocUnsafeSlow(size) {
      return zeroed(checkSize(size));
    });
    replaceValue(BufferCtor, "from", function from(...args) {
      reserve(copiedLength(args[0]));
      return ReflectApply(nativeFrom, BufferCtor, args);
    });
    replaceValue(BufferCtor, "concat", function concat(...args) {
      const list = args[0];
      if (!isArray(list)) return ReflectApply(nativeConcat, BufferCtor, args);
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
      return ReflectApply(nativeConcat, BufferCtor, args);
    });

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
    function wrapConstructor(name, Native, Wrapper) {
      for (const key of ReflectOwnKeys(Native)) {
        if (key !== "prototype" && key !== "length" && key !== "name") {
          defineProp(Wrapper, key, getOwnDesc(Native, key));
        }
      }
      defineProp(Wrapper, "prototype", { value: Native.prototype, writable: false });
      defineProp(Native.prototype, "constructor", {
        value: Wrapper,
        writable: true,
        configurable: true,
        enumerable: false,
      });
      define(name, Wrapper);
    }
    function Blob(...args) {
      if (new.target === undefined) {
        throw new TypeErrorCtor("Failed to construct 'Blob': Please use the 'new' operator");
      }
      if (args.length > 0) args[0] = blobParts(args[0]);
      return ReflectConstruct(NativeBlob, args, new.target === Blob ? NativeBlob : new.target);
    }
    wrapConstructor("Blob", NativeBlob, Blob);
    function File(...args) {
      if (new.target === undefined) {
        throw new TypeErrorCtor("Failed to construct 'File': Please use the 'new' operator");
      }
      if (args.length > 0) args[0] = blobParts(args[0]);
      return ReflectConstruct(NativeFile, args, new.target === File ? NativeFile : new.target);
    }
    wrapConstructor("File", NativeFile, File);

    // TextEncoder / TextDecoder
    const encoderProto = g.TextEncoder.prototype;
    const nativeEncode = encoderProto.encode;
    const nativeEncodeInto = encoderProto.encodeInto;
    replaceValue(encoderProto, "encode", function encode(...args) {
      if (typeof args[0] === "string") reserve(args[0].length);
      return ReflectApply(nativeEncode, this, args);
    });
    replaceValue(encoderProto, "encodeInto", function encodeInto(...args) {
      if (typeof args[0] === "string") reserve(args[0].length);
      return ReflectApply(nativeEncodeInto, this, args);
    });
    const decoderProto = g.TextDecoder.prototype;
    const nativeDecode = decoderProto.decode;
    replaceValue(decoderProto, "decode", function decode(...args) {
      reserve(copiedLength(args[0]));
      return ReflectApply(nativeDecode, this, args);
    });

    // atob / btoa
    const nativeAtob = g.atob;
    const nativeBtoa = g.btoa;
    define("atob", function atob(...args) {
      if (args.length > 0) {
        args[0] = StringCtor(args[0]);
        reserve(args[0].length);
      }
      return ReflectApply(nativeAtob, undefined, args);
    });
    define("btoa", function btoa(...args) {
      if (args.length > 0) {
        args[0] = StringCtor(args[0]);
        reserve(args[0].length * 2);
      }
      return ReflectApply(nativeBtoa, undefined, args);
    });
  }

  // ---- timers -----------------------------------------------------------------------------
  // One host sleep per timer; a cleared timer's sleep still ends but its callback is skipped.
  let nextTimerId = 1;
  const liveTimers = new Map();
  function schedule(id, ms, fire) {
    sleep(ms).then(() => {
      if (liveTimers.has(id)) fire();
    });
  }
  function toDelay(ms) {
    const n = Number(ms);
    return Number.isFinite(n) && n > 0 ? Math.min(n, 2147483647) : 0;
  }
  function setTimeout(callback, ms, ...args) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("setTimeout: the callback must be a function");
    }
    const id = nextTimerId++;
    liveTimers.set(id, true);
    schedule(id, toDelay(ms), () => {
      liveTimers.delete(id);
      callback(...args);
    });
    return id;
  }
  function setInterval(callback, ms, ...args) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("setInterval: the callback must be a function");
    }
    const id = nextTimerId++;
    const delay = Math.max(toDelay(ms), 1);
    liveTimers.set(id, true);
    const tick = () => {
      schedule(id, delay, tick);
      callback(...args);
    };
    schedule(id, delay, tick);
    return id;
  }
  function clearTimer(id) {
    liveTimers.delete(id);
  }
  define("setTimeout", setTimeout);
  define("setInterval", setInterval);
  define("clearTimeout", clearTimer);
  define("clearInterval", clearTimer);
  define("queueMicrotask", function queueMicrotask(callback) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("queueMicrotask: the callback must be a function");
    }
    PromiseCtor.resolve().then(() => callback());
  });

  // AbortSignal.timeout from LLRT is bound to LLRT's timer module, which isogate does not use:
  // give it our timers.
  if (typeof AbortSignal === "function") {
    Object.defineProperty(AbortSignal, "timeout", {
      value: function timeout(ms) {
        const controller = new AbortController();
        setTimeout(() => {
          controller.abort(new DOMException("The operation timed out.", "TimeoutError"));
        }, ms);
        return controller.signal;
      },
      writable: true,
      configurable: true,
    });
  }

  // ---- crypto -------------------------------------------------------------------------------
  const MAX_RANDOM_BYTES = 65536;
  function getRandomValues(array) {
    if (
      !ArrayBuffer.isView(array) ||
      array instanceof DataView ||
      array instanceof Float32Array ||
      array instanceof Float64Array
    ) {
      throw new TypeErrorCtor("crypto.getRandomValues: argument must be an integer TypedArray");
    }
    if (array.byteLength > MAX_RANDOM_BYTES) {
      throw new DOMException(
        `crypto.getRandomValues: ${array.byteLength} bytes requested, at most ${MAX_RANDOM_BYTES} allowed`,
        "QuotaExceededError",
      );
    }
    new Uint8Array(array.buffer, array.byteOffset, array.byteLength).set(randomBytes(array.byteLength));
    return array;
  }
  const hex = [];
  for (let i = 0; i < 256; i++) hex.push((i + 0x100).toString(16).slice(1));
  function randomUUID() {
    const b = randomBytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let s = "";
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) s += "-";
      s += hex[b[i]];
    }
    return s;
  }
  define("crypto", Object.freeze({ getRandomValues, randomUUID }));

  // ---- fetch --------------------------------------------------------------------------------
  const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);
  async function fetch(input, init) {
    const request = new Request(input, init);
    const headers = [];
    request.headers.forEach((value, name) => headers.push([name, value]));
    const method = request.method;
    let body = null;
    if (method !== "GET" && method !== "HEAD") {
      body = new Uint8Array(await request.arrayBuffer());
    }
    const redirect = (init && init.redirect) || (input instanceof Request && input.redirect) || "follow";
    const res = await hostFetch(method, request.url, headers, body, String(redirect));
    const resBody = NULL_BODY_STATUS.has(res.status) || method === "HEAD" ? null : res.body;
    return new Response(resBody, { status: res.status, headers: res.headers });
  }
  define("fetch", fetch);

  // ---- dispatch -----------------------------------------------------------------------------
  function describe(value) {
    if (value === null) return "null";
    if (typeof value !== "object") return typeof value;
    const ctor = value.constructor;
    return ctor && typeof ctor.name === "string" && ctor.name ? ctor.name : "object";
  }

  function workerHandler(namespace) {
    const handler = namespace.default;
    if (handler === null || typeof handler !== "object" || typeof handler.fetch !== "function") {
      throw new TypeErrorCtor(
        "the main module must `export default { async fetch(request, env, ctx) { ... } }`",
      );
    }
    return handler;
  }

  function makeCtx(waits) {
    return Object.freeze({
      waitUntil(promise) {
        waits.push(
          PromiseCtor.resolve(promise).catch((e) => {
            console.error("ctx.waitUntil promise rejected:", e);
          }),
        );
      },
      passThroughOnException() {},
      props: Object.freeze({}),
    });
  }

  async function dispatch(handler, env, method, url, headers, body) {
    const waits = [];
    const init = { method, headers };
    if (body !== null && method !== "GET" && method !== "HEAD") init.body = body;
    const request = new Request(url, init);
    const response = await handler.fetch(request, env, makeCtx(waits));
    if (!(response instanceof Response)) {
      throw new TypeErrorCtor(
        `the fetch handler must return a Response, it returned ${describe(response)}`,
      );
    }
    const outHeaders = [];
    response.headers.forEach((value, name) => outHeaders.push([name, value]));
    const bytes = new Uint8Array(await response.arrayBuffer());
    return {
      status: response.status,
      headers: outHeaders,
      body: bytes,
      waitUntil: waits.length ? PromiseCtor.all(waits) : null,
    };
  }

  async function execute(fn, env) {
    if (typeof fn !== "function") {
      throw new TypeErrorCtor(
        `code must evaluate to a function such as \`async (env) => { ... }\`, it evaluated to ${describe(fn)}`,
      );
    }
    const value = await fn(env);
    const json = JSON.stringify(value === undefined ? null : value);
    return json === undefined ? "null" : json;
  }

  function parseEnv(json) {
    return Object.freeze(JSON.parse(json));
  }

  function define(name, value) {
    Object.defineProperty(g, name, { value, writable: true, configurable: true, enumerable: false });
  }

  return { dispatch, execute, workerHandler, parseEnv };
}
