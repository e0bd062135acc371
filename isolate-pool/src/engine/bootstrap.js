// isogate's Worker-facing glue. Compiled to QuickJS bytecode at build time (build.rs) and loaded
// into every isolate after the LLRT Web API modules are initialised.
//
// `install(host)` receives the host calls as arguments and keeps them in closures: nothing it is
// given is reachable from user code afterwards. It returns the internal entry points the engine
// calls (dispatch, execute, ...), which are likewise never put on the global object.


// ---- intrinsics -------------------------------------------------------------------------------
// Captured when this module is evaluated, before any user code runs: user code may replace
// globals and prototype methods (Promise.prototype.then, Array.prototype.push, Uint8Array, ...)
// and the glue below must neither break (a user-caused failure is the user's `exception`, never
// an `internal` error) nor hand such a replacement one of its own closures.
const ReflectApply = Reflect.apply;
const ReflectConstruct = Reflect.construct;
const ReflectOwnKeys = Reflect.ownKeys;
const ObjectDefineProperty = Object.defineProperty;
const ObjectGetOwnPropertyDescriptor = Object.getOwnPropertyDescriptor;
const ObjectFreeze = Object.freeze;
const ObjectCreate = Object.create;
const ObjectGetPrototypeOf = Object.getPrototypeOf;
const ObjectSetPrototypeOf = Object.setPrototypeOf;
const ObjectPrototype = Object.prototype;
const ArrayPrototype = Array.prototype;
const ArrayIsArray = Array.isArray;
const ArrayJoin = Array.prototype.join;
const ProxyCtor = Proxy;
const StringCtor = String;
const NumberCtor = Number;
const NumberIsFinite = Number.isFinite;
const MathTrunc = Math.trunc;
const MathMax = Math.max;
const MathMin = Math.min;
const SymbolIterator = Symbol.iterator;
const SymbolToStringTag = Symbol.toStringTag;
const JSONStringify = JSON.stringify;
const JSONParse = JSON.parse;
const PromiseCtor = Promise;
const PromiseThen = Promise.prototype.then;
const StringCharCodeAt = String.prototype.charCodeAt;
const StringSlice = String.prototype.slice;
const MapCtor = Map;
const MapHas = Map.prototype.has;
const MapSet = Map.prototype.set;
const MapGet = Map.prototype.get;
const MapDelete = Map.prototype.delete;
const SetCtor = Set;
const SetHas = Set.prototype.has;
const Uint8ArrayCtor = Uint8Array;
const Uint8ArrayIndexOf = Uint8Array.prototype.indexOf;
const Uint8ArraySubarray = Uint8Array.prototype.subarray;
const StringIndexOf = String.prototype.indexOf;
const StringToLowerCase = String.prototype.toLowerCase;
const StringToUpperCase = String.prototype.toUpperCase;
const StringTrim = String.prototype.trim;
const StringIsWellFormed = String.prototype.isWellFormed;
const StringToWellFormed = String.prototype.toWellFormed;
const StringReplace = String.prototype.replace;
const RegExpExec = RegExp.prototype.exec;
const TypeErrorCtor = TypeError;
const RangeErrorCtor = RangeError;
const ErrorCtor = Error;
const TextEncoderCtor = TextEncoder;
const RESOLVED = Promise.resolve();

/** `then` that does not consult a replaceable `Promise.prototype.then`. */
function promiseThen(promise, onFulfilled, onRejected) {
  return ReflectApply(PromiseThen, promise, [onFulfilled, onRejected]);
}
/** Gives an internal promise its own `then` (the intrinsic): the engine waits for a promise by
 * calling its `then`, which must not be a replaced `Promise.prototype.then` that would receive the
 * host's waker. */
function protect(promise) {
  ObjectDefineProperty(promise, "then", {
    __proto__: null,
    value: PromiseThen,
    writable: false,
    enumerable: false,
    configurable: false,
  });
  return promise;
}
/** Appends to an internal array without [[Set]] (no setter on Array.prototype can see it). */
function push(list, value) {
  ObjectDefineProperty(list, list.length, {
    __proto__: null,
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}
function mapHas(map, key) {
  return ReflectApply(MapHas, map, [key]);
}
function mapSet(map, key, value) {
  ReflectApply(MapSet, map, [key, value]);
}
function mapDelete(map, key) {
  ReflectApply(MapDelete, map, [key]);
}
function charCodeAt(s, i) {
  return ReflectApply(StringCharCodeAt, s, [i]);
}

// ---- Fetch standard checks on Headers / Request / Response -------------------------------------
// LLRT's classes silently strip CR/LF inside header values and accept any status; the Fetch
// standard makes both an error the Worker can catch. The constructors and Headers' mutators are
// wrapped: every header list is read once into a snapshot of string pairs, checked, and only
// that snapshot reaches the native class (a getter or iterator cannot change it afterwards).
const NativeHeaders = Headers;
const NativeRequest = Request;
const NativeResponse = Response;
const HeadersProto = NativeHeaders.prototype;
const ResponseProto = NativeResponse.prototype;
const RequestProto = NativeRequest.prototype;
const HeadersSet = HeadersProto.set;
const HeadersAppend = HeadersProto.append;
const HeadersForEach = HeadersProto.forEach;
const HeadersHas = HeadersProto.has;
const HeadersGet = HeadersProto.get;
const ResponseStatus = ObjectGetOwnPropertyDescriptor(ResponseProto, "status").get;
const ResponseHeaders = ObjectGetOwnPropertyDescriptor(ResponseProto, "headers").get;
const ResponseArrayBuffer = ResponseProto.arrayBuffer;
const RequestHeaders = ObjectGetOwnPropertyDescriptor(RequestProto, "headers").get;
const RequestMethod = ObjectGetOwnPropertyDescriptor(RequestProto, "method").get;
const RequestUrl = ObjectGetOwnPropertyDescriptor(RequestProto, "url").get;
const RequestRedirect = ObjectGetOwnPropertyDescriptor(RequestProto, "redirect");
const RequestArrayBuffer = RequestProto.arrayBuffer;
const RequestBodyUsed = ObjectGetOwnPropertyDescriptor(RequestProto, "bodyUsed").get;
const ResponseBodyUsed = ObjectGetOwnPropertyDescriptor(ResponseProto, "bodyUsed").get;
const NULL_BODY_STATUS = new SetCtor([101, 103, 204, 205, 304]);
const REDIRECT_STATUS = new SetCtor([301, 302, 303, 307, 308]);

function isHttpWhitespace(c) {
  return c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d;
}
function isTokenChar(c) {
  return (
    (c >= 0x30 && c <= 0x39) ||
    (c >= 0x41 && c <= 0x5a) ||
    (c >= 0x61 && c <= 0x7a) ||
    c === 0x21 || c === 0x23 || c === 0x24 || c === 0x25 || c === 0x26 || c === 0x27 ||
    c === 0x2a || c === 0x2b || c === 0x2d || c === 0x2e || c === 0x5e || c === 0x5f ||
    c === 0x60 || c === 0x7c || c === 0x7e
  );
}
/** A header name per the Fetch standard (a token), or a TypeError. */
function headerName(name) {
  const s = StringCtor(name);
  if (s.length === 0) throw new TypeErrorCtor("Headers: a header name must not be empty");
  for (let i = 0; i < s.length; i++) {
    if (!isTokenChar(charCodeAt(s, i))) {
      throw new TypeErrorCtor(`Headers: ${JSONStringify(s)} is not a valid header name`);
    }
  }
  return s;
}
/** A header value normalised per the Fetch standard (outer whitespace removed); NUL, CR or LF
 * inside it, or a character above U+00FF, is a TypeError. */
function headerValue(name, value) {
  const s = StringCtor(value);
  let start = 0;
  let end = s.length;
  while (start < end && isHttpWhitespace(charCodeAt(s, start))) start++;
  while (end > start && isHttpWhitespace(charCodeAt(s, end - 1))) end--;
  for (let i = start; i < end; i++) {
    const c = charCodeAt(s, i);
    if (c === 0 || c === 0x0a || c === 0x0d || c > 0xff) {
      throw new TypeErrorCtor(
        `Headers: the value of ${JSONStringify(name)} contains a character not allowed in a header value (NUL, CR, LF or above U+00FF)`,
      );
    }
  }
  return ReflectApply(StringSlice, s, [start, end]);
}
// LLRT's Request/Response take a Blob body but not a File (its own class, not a Blob subclass):
// a File body is handed over as a Blob of its bytes and type.
const FileNameGetter = ObjectGetOwnPropertyDescriptor(File.prototype, "name").get;
const FileSlice = File.prototype.slice;
const FileSize = ObjectGetOwnPropertyDescriptor(File.prototype, "size").get;
const FileType = ObjectGetOwnPropertyDescriptor(File.prototype, "type").get;
function bodyInit(body) {
  if (body === null || typeof body !== "object" || !hasBrand(FileNameGetter, body)) return body;
  return ReflectApply(FileSlice, body, [0, ReflectApply(FileSize, body, []), ReflectApply(FileType, body, [])]);
}
/** Whether `value` is an object of a native class: that class's own getter accepts it. */
function hasBrand(getter, value) {
  try {
    ReflectApply(getter, value, []);
    return true;
  } catch {
    return false;
  }
}
/** Defines global `name` as a plain, writable, non-enumerable value. */
function defineGlobal(name, value) {
  ObjectDefineProperty(globalThis, name, { __proto__: null, value, writable: true, enumerable: false, configurable: true });
}
/** Puts back property `name` of `object` as `desc` describes it (deleted if `desc` is undefined). */
function restoreProperty(object, name, desc) {
  if (desc === undefined) delete object[name];
  else ObjectDefineProperty(object, name, desc);
}
/**
 * Runs `init`, a native module's initialisation that assigns the globals in `names`, and puts
 * each of them back as it was (deleted if it did not exist): the Worker's own value, the
 * bootstrap's, or a lazy accessor. During `init` they are plain writable properties holding
 * undefined, so what `init` assigned, read back inside it, is the module's own.
 */
function keepingGlobals(names, init) {
  const saved = { __proto__: null };
  for (let i = 0; i < names.length; i++) {
    saved[names[i]] = ObjectGetOwnPropertyDescriptor(globalThis, names[i]);
  }
  try {
    for (let i = 0; i < names.length; i++) defineGlobal(names[i], undefined);
    return init();
  } finally {
    for (let i = 0; i < names.length; i++) restoreProperty(globalThis, names[i], saved[names[i]]);
  }
}
/** The accessor lazyGlobal installed for each name (to tell it from a Worker's own). */
const LAZY_ACCESSORS = { __proto__: null };
/** The `make` lazyGlobal was given for each name. */
const LAZY_MAKERS = { __proto__: null };
/**
 * A global made on first access: `make(name)` returns its value, which then replaces the
 * accessor. The Worker may assign the global before that (it is then the Worker's). One arrow
 * function is both the getter (called without an argument) and the setter (called with one);
 * it keeps only the name (the `make`s, shared by the globals of one part, are in LAZY_MAKERS): an
 * isolate pays one small closure and one captured variable per lazy global until it is used.
 */
function lazyGlobal(name, make) {
  LAZY_MAKERS[name] = make;
  const accessor = (...value) => settleLazyGlobal(name, value);
  LAZY_ACCESSORS[name] = accessor;
  ObjectDefineProperty(globalThis, name, {
    __proto__: null,
    get: accessor,
    set: accessor,
    enumerable: false,
    configurable: true,
  });
}
/** The lazy global `name` read (`value` empty) or assigned: it becomes a plain global. */
function settleLazyGlobal(name, value) {
  const v = value.length === 0 ? LAZY_MAKERS[name](name) : value[0];
  defineGlobal(name, v);
  return v;
}
/** Replaces the globals in `values` that are still lazyGlobal accessors by their values (a part
 * that loads several globals settles them all at once). */
function settleLazyGlobals(values) {
  for (const name in values) {
    const desc = ObjectGetOwnPropertyDescriptor(globalThis, name);
    if (desc !== undefined && desc.get !== undefined && desc.get === LAZY_ACCESSORS[name]) {
      defineGlobal(name, values[name]);
    }
  }
}
function isRequestObject(value) {
  return value !== null && typeof value === "object" && hasBrand(RequestMethod, value);
}
function isHeaders(value) {
  if (value === null || typeof value !== "object") return false;
  // The common HeadersInit is a record or an array of pairs: answered without the brand check,
  // whose failure throws (slow: QuickJS builds an Error and a stack, twice). A native Headers
  // whose prototype was replaced by one of these is read as a record (it has no own fields).
  const proto = ObjectGetPrototypeOf(value);
  if (proto === ObjectPrototype || proto === ArrayPrototype || proto === null) return false;
  try {
    ReflectApply(HeadersHas, value, ["x"]);
    return true;
  } catch {
    return false;
  }
}
function checkedPair(name, value) {
  const n = headerName(name);
  return [n, headerValue(n, value)];
}
/** Reads a HeadersInit once into a checked array of [name, value] strings. */
function headerPairs(init) {
  const out = [];
  if (init === null || (typeof init !== "object" && typeof init !== "function")) {
    throw new TypeErrorCtor("Headers: init must be a Headers object, a sequence of pairs or a record");
  }
  if (isHeaders(init)) {
    ReflectApply(HeadersForEach, init, [(value, name) => push(out, [name, value])]);
    return out;
  }
  const method = init[SymbolIterator];
  if (method !== undefined && method !== null) {
    if (typeof method !== "function") throw new TypeErrorCtor("Headers: init is not iterable");
    const iterator = ReflectApply(method, init, []);
    const next = iterator.next;
    for (;;) {
      const step = ReflectApply(next, iterator, []);
      if (step === null || typeof step !== "object") {
        throw new TypeErrorCtor("Headers: iterator result is not an object");
      }
      if (step.done) break;
      const item = step.value;
      if (item === null || typeof item !== "object") {
        throw new TypeErrorCtor("Headers: each header must be a [name, value] pair");
      }
      const pair = [];
      const itemIter = item[SymbolIterator];
      if (typeof itemIter !== "function") {
        throw new TypeErrorCtor("Headers: each header must be a [name, value] pair");
      }
      const it = ReflectApply(itemIter, item, []);
      const itNext = it.next;
      for (;;) {
        const r = ReflectApply(itNext, it, []);
        if (r === null || typeof r !== "object") {
          throw new TypeErrorCtor("Headers: iterator result is not an object");
        }
        if (r.done) break;
        push(pair, r.value);
        if (pair.length > 2) break;
      }
      if (pair.length !== 2) {
        throw new TypeErrorCtor("Headers: each header must be a [name, value] pair");
      }
      push(out, checkedPair(pair[0], pair[1]));
    }
    return out;
  }
  const keys = ReflectOwnKeys(init);
  for (let i = 0; i < keys.length; i++) {
    const key = keys[i];
    if (typeof key !== "string") continue;
    const desc = ObjectGetOwnPropertyDescriptor(init, key);
    if (desc === undefined || !desc.enumerable) continue;
    push(out, checkedPair(key, init[key]));
  }
  return out;
}
/** WebIDL `unsigned short` conversion. */
function toUnsignedShort(value) {
  const n = NumberCtor(value);
  if (!NumberIsFinite(n)) return 0;
  let x = MathTrunc(n) % 65536;
  if (x < 0) x += 65536;
  return x;
}
/** Reads a ResponseInit once into a checked plain object for the native constructor. */
function responseInit(init, hasBody, what) {
  // The standard's default reason phrase is empty (LLRT would fill in "OK").
  const opts = { __proto__: null, statusText: "" };
  let status = 200;
  if (init !== undefined && init !== null) {
    if (typeof init !== "object" && typeof init !== "function") {
      throw new TypeErrorCtor(`${what}: init must be an object`);
    }
    const rawStatus = init.status;
    if (rawStatus !== undefined) {
      status = toUnsignedShort(rawStatus);
      if (status < 200 || status > 599) {
        throw new RangeErrorCtor(
          `${what}: status ${status} is not in the range 200 to 599`,
        );
      }
      opts.status = status;
    }
    const rawText = init.statusText;
    if (rawText !== undefined) {
      const text = StringCtor(rawText);
      for (let i = 0; i < text.length; i++) {
        const c = charCodeAt(text, i);
        if ((c < 0x20 && c !== 0x09) || c === 0x7f || c > 0xff) {
          throw new TypeErrorCtor(`${what}: statusText contains a character not allowed in a reason phrase`);
        }
      }
      opts.statusText = text;
    }
    const headers = init.headers;
    if (headers !== undefined) opts.headers = headerPairs(headers);
  }
  if (hasBody && ReflectApply(SetHas, NULL_BODY_STATUS, [status])) {
    throw new TypeErrorCtor(`${what}: a response with status ${status} cannot have a body`);
  }
  return opts;
}
const REQUEST_INIT_FIELDS = [
  "method", "headers", "body", "referrer", "referrerPolicy", "mode", "credentials", "cache",
  "redirect", "integrity", "keepalive", "signal", "duplex", "priority", "window",
];
function defineMethod(target, name, fn) {
  ObjectDefineProperty(target, name, {
    __proto__: null,
    value: fn,
    writable: true,
    enumerable: false,
    configurable: true,
  });
}

function installFetchChecks(g) {
  const wrappers = { __proto__: null };
  function Headers(init) {
    if (new.target === undefined) {
      throw new TypeErrorCtor("Failed to construct 'Headers': please use the 'new' operator");
    }
    const args = init === undefined ? [] : [headerPairs(init)];
    return ReflectConstruct(NativeHeaders, args, new.target);
  }
  function Response(body, init) {
    if (new.target === undefined) {
      throw new TypeErrorCtor("Failed to construct 'Response': please use the 'new' operator");
    }
    const hasBody = body !== undefined && body !== null;
    const opts = responseInit(init, hasBody, "Response");
    if (isReadableStream(body)) {
      if (isUnusable(body)) throw new TypeErrorCtor("Response: the body stream is locked or has been read");
      const response = ReflectConstruct(NativeResponse, [null, opts], new.target);
      setStreamBody(response, body);
      return response;
    }
    const response = ReflectConstruct(NativeResponse, [bodyInit(body), opts], new.target);
    if (!hasBody) markNullBody(response);
    else if (typeof body === "string") setProvidedText(response, body);
    return response;
  }
  function Request(input, init) {
    if (new.target === undefined) {
      throw new TypeErrorCtor("Failed to construct 'Request': please use the 'new' operator");
    }
    // The body: init's, else the input Request's (a stream moves to the new Request).
    const inputIsRequest = isRequestObject(input);
    const inputStream = inputIsRequest ? streamBody(input) : undefined;
    const inheritsNull = inputIsRequest ? isNullBody(input) : true;
    const inputUnusable = inputIsRequest && !inheritsNull &&
      (inputStream !== undefined ? isUnusable(inputStream) : isUsedNative(input, RequestBodyUsed));
    if (init === undefined || init === null || (typeof init !== "object" && typeof init !== "function")) {
      if (inputUnusable) throw new TypeErrorCtor("Request: the input Request's body has already been used");
      const request = ReflectConstruct(NativeRequest, init === undefined ? [input] : [input, init], new.target);
      if (inputStream !== undefined) setStreamBody(request, inputStream);
      else if (inheritsNull) markNullBody(request);
      return request;
    }
    const opts = { __proto__: null };
    for (let i = 0; i < REQUEST_INIT_FIELDS.length; i++) {
      const field = REQUEST_INIT_FIELDS[i];
      const v = init[field];
      if (v === undefined) continue;
      opts[field] = field === "headers" ? headerPairs(v) : v;
    }
    const body = opts.body;
    let stream = undefined;
    if (isReadableStream(body)) {
      if (isUnusable(body)) throw new TypeErrorCtor("Request: the body stream is locked or has been read");
      const method = opts.method === undefined ? "GET" : ReflectApply(StringToUpperCase, StringCtor(opts.method), []);
      if (method === "GET" || method === "HEAD") {
        throw new TypeErrorCtor(`Request: a ${method} request cannot have a body`);
      }
      stream = body;
      opts.body = null;
    } else if (body !== undefined) {
      opts.body = bodyInit(body);
    }
    if (body === undefined && inputUnusable) {
      throw new TypeErrorCtor("Request: the input Request's body has already been used");
    }
    const request = ReflectConstruct(NativeRequest, [input, opts], new.target);
    if (stream !== undefined) setStreamBody(request, stream);
    else if (body === undefined && inputStream !== undefined) setStreamBody(request, inputStream);
    else if (body === null || (body === undefined && inheritsNull)) markNullBody(request);
    return request;
  }
  // Request and Response instances get a prototype of ours between them and the native one:
  // LLRT's getters (body, bodyUsed, type) are not configurable, but can be shadowed there.
  for (const [wrapper, native, proto] of [
    [Headers, NativeHeaders, HeadersProto],
    [Response, NativeResponse, ObjectCreate(ResponseProto)],
    [Request, NativeRequest, ObjectCreate(RequestProto)],
  ]) {
    ObjectDefineProperty(wrapper, "prototype", {
      __proto__: null,
      value: proto,
      writable: false,
      enumerable: false,
      configurable: false,
    });
    defineMethod(proto, "constructor", wrapper);
    for (const key of ReflectOwnKeys(native)) {
      if (key === "prototype" || key === "length" || key === "name") continue;
      const desc = ObjectGetOwnPropertyDescriptor(native, key);
      ObjectDefineProperty(wrapper, key, desc);
    }
    defineMethod(g, native.name, wrapper);
    wrappers[native.name] = wrapper;
  }
  // Serialised by QuickJS's JSON.stringify (LLRT's recurses without a depth limit: a deeply
  // nested value would overflow the native stack).
  defineMethod(Response, "json", function json(data, init) {
    const body = JSONStringify(data);
    if (body === undefined) {
      throw new TypeErrorCtor("Response.json: the data cannot be serialised to JSON");
    }
    const opts = responseInit(init, true, "Response.json");
    const pairs = opts.headers === undefined ? [] : opts.headers;
    let typed = false;
    for (let i = 0; i < pairs.length; i++) {
      if (ReflectApply(StringToLowerCase, pairs[i][0], []) === "content-type") typed = true;
    }
    if (!typed) push(pairs, ["content-type", "application/json"]);
    opts.headers = pairs;
    const response = ReflectConstruct(NativeResponse, [body, opts], Response);
    setProvidedText(response, body);
    return response;
  });
  const nativeError = NativeResponse.error;
  defineMethod(Response, "error", function error() {
    const response = ReflectApply(nativeError, NativeResponse, []);
    ObjectSetPrototypeOf(response, Response.prototype);
    markNullBody(response);
    return response;
  });
  defineMethod(Response, "redirect", function redirect(url, status) {
    const code = status === undefined ? 302 : toUnsignedShort(status);
    if (!ReflectApply(SetHas, REDIRECT_STATUS, [code])) {
      throw new RangeErrorCtor(`Response.redirect: ${code} is not a redirect status (301, 302, 303, 307, 308)`);
    }
    let href;
    try {
      href = new (nativeClasses("url").URL)(StringCtor(url)).href;
    } catch {
      throw new TypeErrorCtor(`Response.redirect: ${JSONStringify(StringCtor(url))} is not a valid URL`);
    }
    const response = ReflectConstruct(NativeResponse, [null, { __proto__: null, status: code, statusText: "", headers: [["location", href]] }], Response);
    markNullBody(response);
    return response;
  });
  defineMethod(HeadersProto, "set", function set(name, value) {
    const n = headerName(name);
    return ReflectApply(HeadersSet, this, [n, headerValue(n, value)]);
  });
  defineMethod(HeadersProto, "append", function append(name, value) {
    const n = headerName(name);
    return ReflectApply(HeadersAppend, this, [n, headerValue(n, value)]);
  });
  return wrappers;
}

// ---- Blob.slice per the File API -----------------------------------------------------------------
// LLRT's slice defaults `end` to 0 and panics when start > end; compute the span here.
function installBlobSlice(g) {
  function relative(value, size, fallback) {
    if (value === undefined) return fallback;
    let n = NumberCtor(value);
    if (n !== n) n = 0;
    n = MathTrunc(n);
    return n < 0 ? MathMax(size + n, 0) : MathMin(n, size);
  }
  for (const name of ["Blob", "File"]) {
    const ctor = g[name];
    if (typeof ctor !== "function") continue;
    // The class's own prototype (the one holding the `size` getter), even if the global was
    // replaced by a wrapper or subclass earlier in install().
    let proto = ctor.prototype;
    let sizeDesc = undefined;
    while (proto !== null && (sizeDesc = ObjectGetOwnPropertyDescriptor(proto, "size")) === undefined) {
      proto = Object.getPrototypeOf(proto);
    }
    if (proto === null || typeof sizeDesc.get !== "function") continue;
    const nativeSlice = proto.slice;
    if (typeof nativeSlice !== "function") continue;
    const sizeGetter = sizeDesc.get;
    defineMethod(proto, "slice", function slice(start, end, contentType) {
      const size = ReflectApply(sizeGetter, this, []);
      const from = relative(start, size, 0);
      const to = MathMax(relative(end, size, size), from);
      const args = contentType === undefined ? [from, to] : [from, to, StringCtor(contentType)];
      return ReflectApply(nativeSlice, this, args);
    });
  }
}

// ---- streams and bodies as streams ---------------------------------------------------------------
// ReadableStream, WritableStream, TransformStream and friends come from the vendored
// web-streams-polyfill (vendor/web-streams-polyfill, the WHATWG reference implementation's port).
// It is compiled to bytecode at build time but only loaded into an isolate the first time its
// Worker touches a stream global or a body's `.body`: the globals are accessors until then. It
// comes with bodies.js (`part("bodies")`), the glue that reads, tees and pumps a body once it is a
// stream; what stays here serves every body.
//
// Request/Response bodies are streams over LLRT's byte bodies: a body is null (no body), native
// (LLRT holds the bytes; `.body` makes a one-chunk stream that reads them on first pull) or a
// stream (`new Response(stream)`, or a native body whose `.body` was taken). Every consumer
// (text, json, arrayBuffer, bytes, blob, formData, dispatch, fetch) reads through `bodyBytes`.
const WeakMapCtor = WeakMap;
const WeakMapGet = WeakMap.prototype.get;
const WeakMapSet = WeakMap.prototype.set;
const WeakMapDelete = WeakMap.prototype.delete;
const WeakSetCtor = WeakSet;
const WeakSetHas = WeakSet.prototype.has;
const WeakSetAdd = WeakSet.prototype.add;
const ObjectHasOwn = Object.hasOwn;
const ArrayBufferIsView = ArrayBuffer.isView;
const ArrayBufferSlice = ArrayBuffer.prototype.slice;
const ArrayBufferByteLength = ObjectGetOwnPropertyDescriptor(ArrayBuffer.prototype, "byteLength").get;
const TypedArrayProto = ObjectGetPrototypeOf(Uint8Array.prototype);
const ViewBuffer = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "buffer").get;
const ViewOffset = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "byteOffset").get;
const ViewLength = ObjectGetOwnPropertyDescriptor(TypedArrayProto, "byteLength").get;
const DataViewBuffer = ObjectGetOwnPropertyDescriptor(DataView.prototype, "buffer").get;
const DataViewOffset = ObjectGetOwnPropertyDescriptor(DataView.prototype, "byteOffset").get;
const DataViewLength = ObjectGetOwnPropertyDescriptor(DataView.prototype, "byteLength").get;
const Uint8ArraySet = Uint8Array.prototype.set;
const STREAM_GLOBALS = [
  "ReadableStream", "ReadableStreamDefaultReader", "ReadableStreamBYOBReader",
  "ReadableStreamBYOBRequest", "ReadableStreamDefaultController", "ReadableByteStreamController",
  "WritableStream", "WritableStreamDefaultWriter", "WritableStreamDefaultController",
  "TransformStream", "TransformStreamDefaultController", "ByteLengthQueuingStrategy",
  "CountQueuingStrategy",
];
/** Bodies that are streams (object → ReadableStream) and bodies that are null. */
const STREAM_BODIES = new WeakMapCtor();
const NULL_BODIES = new WeakSetCtor();
/** Native bodies being or already read (LLRT's own flag cannot be read while a read is pending). */
const USED_BODIES = new WeakSetCtor();
/** The polyfill's classes and captured methods, once loaded (null before; bodies.js). */
let streams = null;
/** Loads the polyfill and bodies.js once per isolate; returns `streams`. */
function loadStreams() {
  if (streams === null) {
    const bodies = part("bodies");
    streams = bodies.streams;
    settleLazyGlobals(bodies.classes);
  }
  return streams;
}
/** `host.module`, kept by install() for the parts loaded on first use. */
let hostModule = null;
const DOMExceptionCtor = DOMException;
const ArrayFrom = Array.from;
const ObjectToString = Object.prototype.toString;
/**
 * Native functions that the parts loaded on first use call, captured before any user code ran
 * (install() replaces most of them on their objects with stubs that load those parts).
 */
const NATIVES = ObjectFreeze({
  __proto__: null,
  // LLRT's event classes (Event, EventTarget, CustomEvent, AbortController, AbortSignal) and
  // AbortSignal's `aborted` and `reason` getters, once a Worker first reads one of those globals.
  events: { __proto__: null },
  // The groups of nativeClasses(), each once it is made.
  classes: { __proto__: null },
  // Buffer's constructor and its alloc, from and concat, once a Worker first reads `Buffer`.
  buffer: { __proto__: null, ctor: undefined, alloc: undefined, from: undefined, concat: undefined },
  Blob,
  File,
  BlobSize: ObjectGetOwnPropertyDescriptor(Blob.prototype, "size").get,
  FileSize,
  TextEncoderEncode: TextEncoder.prototype.encode,
  TextEncoderEncodeInto: TextEncoder.prototype.encodeInto,
  TextDecoderDecode: TextDecoder.prototype.decode,
  atob,
  btoa,
});
/**
 * Native globals made the first time a Worker (or the glue: Response.redirect, formData())
 * reaches one of them: URL and URLSearchParams (llrt_url), FormData, `performance`
 * (llrt_perf_hooks). `host.classes(group)` defines the group's globals, which are read back while
 * they are the bootstrap's plain properties and then put back as they were (keepingGlobals): a
 * lazy accessor, or what the Worker assigned. What the glue calls is captured at that moment,
 * before the Worker can reach the new classes.
 */
const CLASS_GROUPS = ObjectFreeze({
  __proto__: null,
  url: ObjectFreeze(["URL", "URLSearchParams"]),
  formdata: ObjectFreeze(["FormData"]),
  performance: ObjectFreeze(["performance"]),
});
/** `host.classes` (set by install()). */
let hostClasses = null;
function nativeClasses(group) {
  let made = NATIVES.classes[group];
  if (made === undefined) {
    const names = CLASS_GROUPS[group];
    made = { __proto__: null };
    keepingGlobals(names, () => {
      hostClasses(group);
      for (let i = 0; i < names.length; i++) {
        made[names[i]] = ObjectGetOwnPropertyDescriptor(globalThis, names[i]).value;
      }
    });
    if (group === "url") made.URLSearchParamsForEach = made.URLSearchParams.prototype.forEach;
    else if (group === "formdata") made.FormDataAppend = made.FormData.prototype.append;
    NATIVES.classes[group] = made;
  }
  return made;
}
/** The globals llrt_crypto's init defines. */
const CRYPTO_INIT_GLOBALS = ObjectFreeze(["crypto", "Crypto", "CryptoKey", "SubtleCrypto"]);
/** The globals llrt_buffer's init (re)defines besides Buffer, and the one its class extends. */
const BUFFER_INIT_GLOBALS = ObjectFreeze(["Uint8Array", "Blob", "File", "atob", "btoa"]);
/** The File constructor the Worker sees (install()'s guarded wrapper). */
let GuardedFile = null;
/**
 * What every part gets (`make(H)`): the captured intrinsics and host calls. Made by `makeH`
 * (set by install(); it reads only what was captured before any user code ran) when the first
 * part loads: a Worker that needs no part never pays for its ~100 properties.
 */
let H = null;
let makeH = null;
const PARTS = { __proto__: null };
/**
 * A part of the glue that only some Workers need, made once per isolate on first use: lazy.js
 * (crypto.subtle guards, encoding and compression streams, structuredClone, stack traces),
 * guards.js (native memory guards), events.js, forms.js, outbound.js (fetch()), bodies.js
 * (bodies as streams), apis.js (tenant APIs, client tools, ApiError). Each part's
 * `make(H)` uses only what H holds (its load may come after user code replaced any global).
 */
function part(name) {
  let made = PARTS[name];
  if (made === undefined) {
    if (H === null) H = makeH();
    made = hostModule(name)(H);
    PARTS[name] = made;
  }
  return made;
}

function streamBody(obj) {
  return ReflectApply(WeakMapGet, STREAM_BODIES, [obj]);
}
function setStreamBody(obj, stream) {
  ReflectApply(WeakMapSet, STREAM_BODIES, [obj, stream]);
}
function isNullBody(obj) {
  return ReflectApply(WeakSetHas, NULL_BODIES, [obj]);
}
function markNullBody(obj) {
  ReflectApply(WeakSetAdd, NULL_BODIES, [obj]);
}
/**
 * Bodies given as a string (`new Response("...")`, `Response.json(...)`): the string, so that
 * reading the body encodes it here (UTF-8, lone surrogates as U+FFFD) instead of a round trip
 * through LLRT's asynchronous arrayBuffer(), the larger part of a small Worker's response cost.
 * LLRT keeps the same string as the native body (read natively by clone()s and `.body`).
 */
const PROVIDED_TEXT = new WeakMapCtor();
const TextEncoderEncode = TextEncoder.prototype.encode;
let utf8Encoder = null;
function setProvidedText(obj, text) {
  ReflectApply(WeakMapSet, PROVIDED_TEXT, [obj, text]);
}
/** The body's bytes if it was given as a string and is unread (then marked used), else undefined. */
function takeProvidedText(obj) {
  const text = ReflectApply(WeakMapGet, PROVIDED_TEXT, [obj]);
  if (text === undefined) return undefined;
  ReflectApply(WeakMapDelete, PROVIDED_TEXT, [obj]);
  ReflectApply(WeakSetAdd, USED_BODIES, [obj]);
  if (utf8Encoder === null) utf8Encoder = new TextEncoderCtor();
  const usv = ReflectApply(StringIsWellFormed, text, []) ? text : ReflectApply(StringToWellFormed, text, []);
  return ReflectApply(TextEncoderEncode, utf8Encoder, [usv]);
}
function isUsedNative(obj, nativeUsed) {
  return ReflectApply(WeakSetHas, USED_BODIES, [obj]) || ReflectApply(nativeUsed, obj, []);
}
/** Reads a native body once (LLRT's arrayBuffer), marking it used before the read starts. */
async function readNative(obj, nativeArrayBuffer) {
  ReflectApply(WeakSetAdd, USED_BODIES, [obj]);
  return new Uint8ArrayCtor(await ReflectApply(nativeArrayBuffer, obj, []));
}
/** Whether `value` is a ReadableStream (the polyfill's brand check, not `instanceof`). */
function isReadableStream(value) {
  return streams !== null && value !== null && typeof value === "object" && hasBrand(streams.locked, value);
}
/** A stream that can no longer be read: locked, or read from / cancelled ("disturbed"). */
function isUnusable(stream) {
  return stream._disturbed === true || ReflectApply(streams.locked, stream, []);
}
/**
 * The body of a Request/Response as bytes, consuming it. `nativeArrayBuffer` is the class's
 * own reader (its brand check rejects other objects); `nativeUsed` its bodyUsed getter.
 */
async function bodyBytes(obj, nativeArrayBuffer, nativeUsed, limit, what) {
  const stream = streamBody(obj);
  if (stream !== undefined) return part("bodies").readStream(stream, limit, what);
  const ready = bodyBytesNow(obj, nativeUsed, limit, what);
  if (ready !== undefined) return ready;
  const bytes = await readNative(obj, nativeArrayBuffer);
  if (bytes.length > limit) throw overLimit(what, limit);
  return bytes;
}
/**
 * The part of `bodyBytes` that needs no await: the bytes of a null body or of a body given as a
 * string (consuming it), the same errors for a used body or one over `limit`; undefined when the
 * body must be read (a stream, or bytes LLRT holds).
 */
function bodyBytesNow(obj, nativeUsed, limit, what) {
  if (streamBody(obj) !== undefined) return undefined;
  if (isUsedNative(obj, nativeUsed)) throw new TypeErrorCtor(`${what}: the body has already been used`);
  if (isNullBody(obj)) return new Uint8ArrayCtor(0);
  const bytes = takeProvidedText(obj);
  if (bytes !== undefined && bytes.length > limit) throw overLimit(what, limit);
  return bytes;
}
function overLimit(what, limit) {
  return new RangeErrorCtor(`${what}: the body exceeds the limit of ${limit} bytes`);
}
function installStreams(g, host, wrappers) {
  hostModule = host.module;
  const streamClass = (name) => {
    loadStreams();
    return part("bodies").classes[name];
  };
  for (const name of [...STREAM_GLOBALS, "TextEncoderStream", "TextDecoderStream", "CompressionStream", "DecompressionStream"]) {
    lazyGlobal(name, streamClass);
  }

  // UTF-8 decoding of body bytes (BOM stripped), with one decoder made on first use; the size is
  // charged first, as the guarded TextDecoder.prototype.decode would.
  const TextDecoderCtor = g.TextDecoder;
  const decode = NATIVES.TextDecoderDecode;
  const reserve = host.reserve;
  let decoder = null;
  const utf8 = (bytes) => {
    if (decoder === null) decoder = new TextDecoderCtor();
    reserve(bytes.length);
    return ReflectApply(decode, decoder, [bytes]);
  };
  // The Body mixin of Request and Response, over the native classes: shared helpers take the
  // class's natives (`c`); each class has its own methods, as Web IDL says.
  const BlobCtor = g.Blob;
  const contentType = (c, obj) => ReflectApply(HeadersGet, ReflectApply(c.headers, obj, []), ["content-type"]);
  const read = (c, obj, method) => bodyBytes(obj, c.arrayBuffer, c.used, Infinity, `${c.what}.${method}`);
  function bodyOf(c, obj) {
    const existing = streamBody(obj);
    if (existing !== undefined) return existing;
    const used = isUsedNative(obj, c.used);
    if (isNullBody(obj)) return null;
    loadStreams();
    const bodies = part("bodies");
    // Read by a consumer: a stream that is disturbed and stays locked, as after a read.
    const stream = used ? bodies.usedStream() : bodies.byteStream(() => readNative(obj, c.arrayBuffer));
    setStreamBody(obj, stream);
    return stream;
  }
  function bodyUsed(c, obj) {
    const stream = streamBody(obj);
    if (stream !== undefined) return stream._disturbed === true;
    return isUsedNative(obj, c.used);
  }
  function cloneOf(c, obj) {
    if (bodyUsed(c, obj)) throw new TypeErrorCtor(`${c.what}.clone: the body has already been used`);
    const stream = streamBody(obj);
    if (stream !== undefined && ReflectApply(streams.locked, stream, [])) {
      throw new TypeErrorCtor(`${c.what}.clone: the body is locked`);
    }
    const copy = ReflectApply(c.clone, obj, []);
    ObjectSetPrototypeOf(copy, ObjectGetPrototypeOf(obj));
    if (isNullBody(obj)) markNullBody(copy);
    const text = ReflectApply(WeakMapGet, PROVIDED_TEXT, [obj]);
    if (text !== undefined) setProvidedText(copy, text);
    if (stream !== undefined) {
      const branches = part("bodies").cloneBranches(stream);
      setStreamBody(obj, branches[0]);
      setStreamBody(copy, branches[1]);
    }
    // A fetch() response's own url/redirected (see fetch below) belong to the copy too.
    for (const key of ["url", "redirected"]) {
      if (ObjectHasOwn(obj, key)) ObjectDefineProperty(copy, key, ObjectGetOwnPropertyDescriptor(obj, key));
    }
    return copy;
  }
  for (const [nativeProto, what] of [[RequestProto, "Request"], [ResponseProto, "Response"]]) {
    const c = {
      __proto__: null,
      what,
      arrayBuffer: nativeProto.arrayBuffer,
      used: ObjectGetOwnPropertyDescriptor(nativeProto, "bodyUsed").get,
      clone: nativeProto.clone,
      headers: nativeProto === RequestProto ? RequestHeaders : ResponseHeaders,
    };
    const proto = wrappers[what].prototype;
    ObjectDefineProperty(proto, "body", {
      __proto__: null,
      get: function body() {
        return bodyOf(c, this);
      },
      enumerable: true,
      configurable: true,
    });
    ObjectDefineProperty(proto, "bodyUsed", {
      __proto__: null,
      get: function bodyUsedGetter() {
        return bodyUsed(c, this);
      },
      enumerable: true,
      configurable: true,
    });
    defineMethod(proto, "arrayBuffer", async function arrayBuffer() {
      const bytes = await read(c, this, "arrayBuffer");
      const buffer = ReflectApply(ViewBuffer, bytes, []);
      if (bytes.byteOffset === 0 && bytes.length === ReflectApply(ArrayBufferByteLength, buffer, [])) return buffer;
      return ReflectApply(ArrayBufferSlice, buffer, [bytes.byteOffset, bytes.byteOffset + bytes.length]);
    });
    defineMethod(proto, "bytes", async function bytes() {
      return read(c, this, "bytes");
    });
    defineMethod(proto, "text", async function text() {
      return utf8(await read(c, this, "text"));
    });
    // `json()` is JSON.parse of the body's text (LLRT's own parser rejects what JSON allows, such
    // as escaped lone surrogates, and throws a plain Error where the standard says SyntaxError).
    defineMethod(proto, "json", async function json() {
      return JSONParse(utf8(await read(c, this, "json")));
    });
    defineMethod(proto, "blob", async function blob() {
      const type = contentType(c, this);
      const bytes = await read(c, this, "blob");
      return new BlobCtor([bytes], { type: type === null ? "" : type });
    });
    defineMethod(proto, "formData", async function formData() {
      const type = contentType(c, this);
      const bytes = await read(c, this, "formData");
      return part("forms").formDataFrom(`${c.what}.formData`, type === null ? "" : type, bytes, utf8);
    });
    defineMethod(proto, "clone", function clone() {
      return cloneOf(c, this);
    });
  }

  // Response.type: "error" for Response.error(), else "default" (as in Workers; LLRT says "basic").
  const responseType = ObjectGetOwnPropertyDescriptor(ResponseProto, "type").get;
  ObjectDefineProperty(wrappers.Response.prototype, "type", {
    __proto__: null,
    get: function type() {
      return ReflectApply(responseType, this, []) === "error" ? "error" : "default";
    },
    enumerable: true,
    configurable: true,
  });

  // Blob.prototype.stream(): the blob's bytes as a byte stream.
  const BlobProto = g.Blob.prototype;
  const blobArrayBuffer = BlobProto.arrayBuffer;
  const blobSize = ObjectGetOwnPropertyDescriptor(BlobProto, "size").get;
  defineMethod(BlobProto, "stream", function stream() {
    ReflectApply(blobSize, this, []);
    const blob = this;
    loadStreams();
    return part("bodies").byteStream(async () => new Uint8ArrayCtor(await ReflectApply(blobArrayBuffer, blob, [])));
  });
}

// ---- events --------------------------------------------------------------------------------------
// LLRT's event classes (llrt_events, llrt_abort) are made the first time a Worker reaches one of
// these globals (host.classes("eventclasses") runs both modules' init), and events.js, the DOM standard's event
// semantics over them, is loaded then (patching the native prototypes once). Those globals are
// the only way to them: a Request's `signal` is undefined unless the Worker gave it one made by
// them, so nothing else meets an instance before they are made.
const EVENT_GLOBALS = ObjectFreeze(["Event", "EventTarget", "CustomEvent", "AbortController", "AbortSignal"]);
function installEvents(host, setTimeout) {
  const natives = NATIVES.events;
  const make = () => {
    // The inits assign all five globals: each is put back as it was (a lazy accessor, or what
    // the Worker assigned), so a Worker's own value survives and the others stay lazy.
    keepingGlobals(EVENT_GLOBALS, () => {
      host.classes("eventclasses");
      for (let i = 0; i < EVENT_GLOBALS.length; i++) {
        const name = EVENT_GLOBALS[i];
        natives[name] = ObjectGetOwnPropertyDescriptor(globalThis, name).value;
      }
    });
    const SignalProto = natives.AbortSignal.prototype;
    natives.SignalAborted = ObjectGetOwnPropertyDescriptor(SignalProto, "aborted").get;
    natives.SignalReason = ObjectGetOwnPropertyDescriptor(SignalProto, "reason").get;
    // LLRT's AbortSignal.timeout is bound to LLRT's timer module, which isogate does not use:
    // it gets our timers.
    const AbortControllerCtor = natives.AbortController;
    ObjectDefineProperty(natives.AbortSignal, "timeout", {
      __proto__: null,
      value: function timeout(ms) {
        const controller = new AbortControllerCtor();
        setTimeout(() => {
          controller.abort(new DOMExceptionCtor("The operation timed out.", "TimeoutError"));
        }, ms);
        return controller.signal;
      },
      writable: true,
      configurable: true,
    });
  };
  const eventNatives = () => {
    if (natives.Event === undefined) make();
    return natives;
  };
  const eventClass = (name) => {
    eventNatives();
    part("events");
    return natives[name];
  };
  for (let i = 0; i < EVENT_GLOBALS.length; i++) lazyGlobal(EVENT_GLOBALS[i], eventClass);
  return eventNatives;
}

// ---- stack traces --------------------------------------------------------------------------------
// QuickJS hands Error.prepareStackTrace one CallSite per frame, and CallSite.getFunction() returns
// the frame's function, including this module's dispatch/timer closures. The native
// prepareStackTrace slot only ever holds `sanitize` below: it passes the user's function
// CallSite-like objects that expose names and positions, never a function or a receiver (as V8
// does for strict-mode frames, which all module code is).
function installStackTraceGuard() {
  const desc = ObjectGetOwnPropertyDescriptor(ErrorCtor, "prepareStackTrace");
  if (!desc || typeof desc.set !== "function") return;
  const nativeSet = desc.set;
  const limit = ObjectGetOwnPropertyDescriptor(ErrorCtor, "stackTraceLimit");
  let userPrepare = undefined;
  // `sanitize`, made the first time the Worker sets a function (most never do).
  let sanitize = null;
  ObjectDefineProperty(ErrorCtor, "prepareStackTrace", {
    __proto__: null,
    get: function prepareStackTrace() {
      return userPrepare;
    },
    set: function prepareStackTrace(value) {
      if (typeof value === "function" && sanitize === null) {
        sanitize = part("lazy").makeSanitize(nativeSet, limit, () => userPrepare);
      }
      userPrepare = value;
      ReflectApply(nativeSet, ErrorCtor, [typeof value === "function" ? sanitize : value]);
    },
    enumerable: desc.enumerable,
    configurable: false,
  });
}

export function install(host) {
  const g = globalThis;
  const { sleep, fetch: hostFetch, randomBytes, maxBodyBytes } = host;
  hostClasses = host.classes;

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
  // The checks live in guards.js, loaded on the first call of one of these stubs; the natives
  // they call were captured before any user code ran (NATIVES), Buffer's from the class when it
  // is made, before the Worker can reach it.
  {
    const guards = () => part("guards");
    function replaceValue(object, name, value) {
      const desc = ObjectGetOwnPropertyDescriptor(object, name);
      desc.value = value;
      ObjectDefineProperty(object, name, desc);
    }
    // Buffer (LLRT's, ~50 native methods) is made when a Worker first reads it: host.buffer runs
    // llrt_buffer's init, which also defines Blob, File, atob and btoa again, so those globals and
    // the prototypes' `constructor` are put back as they were (the guarded ones below, or the
    // Worker's own); its `extends Uint8Array` sees the intrinsic, whatever the Worker did to the
    // global.
    const NativeBlob = NATIVES.Blob;
    const NativeFile = NATIVES.File;
    lazyGlobal("Buffer", () => {
      const blobConstructor = ObjectGetOwnPropertyDescriptor(NativeBlob.prototype, "constructor");
      const fileConstructor = ObjectGetOwnPropertyDescriptor(NativeFile.prototype, "constructor");
      let BufferCtor;
      try {
        BufferCtor = keepingGlobals(BUFFER_INIT_GLOBALS, () => {
          defineGlobal("Uint8Array", Uint8ArrayCtor);
          return host.buffer();
        });
      } finally {
        restoreProperty(NativeBlob.prototype, "constructor", blobConstructor);
        restoreProperty(NativeFile.prototype, "constructor", fileConstructor);
      }
      const natives = NATIVES.buffer;
      natives.ctor = BufferCtor;
      natives.alloc = BufferCtor.alloc;
      natives.from = BufferCtor.from;
      natives.concat = BufferCtor.concat;
      replaceValue(BufferCtor, "alloc", function alloc(size, fill, encoding) {
        return ReflectApply(guards().alloc, undefined, arguments);
      });
      replaceValue(BufferCtor, "allocUnsafe", function allocUnsafe(size) {
        return guards().allocUnsafe(size);
      });
      replaceValue(BufferCtor, "allocUnsafeSlow", function allocUnsafeSlow(size) {
        return guards().allocUnsafe(size);
      });
      replaceValue(BufferCtor, "from", function from(...args) {
        return ReflectApply(guards().from, undefined, args);
      });
      replaceValue(BufferCtor, "concat", function concat(...args) {
        return ReflectApply(guards().concat, undefined, args);
      });
      return BufferCtor;
    });
    // Blob and File: the global is a wrapper whose prototype is the native one (instances are
    // native), so the native constructor is never reachable.
    function wrapConstructor(name, Native, Wrapper) {
      for (const key of ReflectOwnKeys(Native)) {
        if (key !== "prototype" && key !== "length" && key !== "name") {
          ObjectDefineProperty(Wrapper, key, ObjectGetOwnPropertyDescriptor(Native, key));
        }
      }
      ObjectDefineProperty(Wrapper, "prototype", { __proto__: null, value: Native.prototype, writable: false });
      defineMethod(Native.prototype, "constructor", Wrapper);
      defineGlobal(name, Wrapper);
    }
    function Blob(...args) {
      if (new.target === undefined) {
        throw new TypeErrorCtor("Failed to construct 'Blob': Please use the 'new' operator");
      }
      if (args.length > 0) args[0] = guards().blobParts(args[0]);
      return ReflectConstruct(NativeBlob, args, new.target === Blob ? NativeBlob : new.target);
    }
    wrapConstructor("Blob", NativeBlob, Blob);
    function File(...args) {
      if (new.target === undefined) {
        throw new TypeErrorCtor("Failed to construct 'File': Please use the 'new' operator");
      }
      if (args.length > 0) args[0] = guards().blobParts(args[0]);
      return ReflectConstruct(NativeFile, args, new.target === File ? NativeFile : new.target);
    }
    wrapConstructor("File", NativeFile, File);
    GuardedFile = File;
    replaceValue(TextEncoder.prototype, "encode", function encode(...args) {
      return ReflectApply(guards().encode, this, args);
    });
    replaceValue(TextEncoder.prototype, "encodeInto", function encodeInto(...args) {
      return ReflectApply(guards().encodeInto, this, args);
    });
    replaceValue(TextDecoder.prototype, "decode", function decode(...args) {
      return ReflectApply(guards().decode, this, args);
    });
    defineGlobal("atob", function atob(...args) {
      return ReflectApply(guards().atob, undefined, args);
    });
    defineGlobal("btoa", function btoa(...args) {
      return ReflectApply(guards().btoa, undefined, args);
    });
  }

  // ---- ArrayBuffer.prototype.transfer -------------------------------------------------------
  // QuickJS's transfer (and any detach) of a buffer the Rust side made (Response.arrayBuffer(),
  // Blob, TextEncoder, ...) corrupts memory: the new buffer gets the free function without its
  // opaque (a Rust Vec freed with the wrong capacity, or reallocated with QuickJS's allocator when
  // the length changes) and the detached original is freed again with a null pointer. A
  // fixed-length buffer is therefore "transferred" by copying into a QuickJS-allocated buffer
  // (charged; fails as a RangeError) and the original is NOT detached (a deviation from the
  // standard: the sender keeps its bytes). Resizable buffers are only ever made by QuickJS and
  // keep the native transfer. structuredClone's transfer list follows the same rule.
  {
    const ArrayBufferCtor = ArrayBuffer;
    const proto = ArrayBufferCtor.prototype;
    const getter = (name) => ObjectGetOwnPropertyDescriptor(proto, name).get;
    const byteLength = getter("byteLength");
    const detached = getter("detached");
    const resizable = getter("resizable");
    for (const name of ["transfer", "transferToFixedLength"]) {
      const native = proto[name];
      if (typeof native !== "function") continue;
      defineMethod(proto, name, {
        [name](newLength) {
          const old = ReflectApply(byteLength, this, []);
          if (ReflectApply(resizable, this, [])) return ReflectApply(native, this, [newLength]);
          if (ReflectApply(detached, this, [])) {
            throw new TypeErrorCtor(`ArrayBuffer.prototype.${name}: the buffer is detached`);
          }
          let len = old;
          if (newLength !== undefined) {
            len = NumberCtor(newLength);
            len = len !== len ? 0 : MathTrunc(len);
            if (len < 0 || len > 9007199254740991) {
              throw new RangeErrorCtor(`ArrayBuffer.prototype.${name}: invalid length`);
            }
          }
          const out = new ArrayBufferCtor(len);
          new Uint8ArrayCtor(out).set(new Uint8ArrayCtor(this, 0, MathMin(len, old)));
          return out;
        },
      }[name]);
    }
  }

  // ---- structuredClone ----------------------------------------------------------------------
  // The HTML standard's structured clone, in JS (LLRT's native one cannot clone Number/String/
  // Boolean/BigInt wrappers, Blob or File, and runs uninterruptibly): cycles and shared
  // references kept, Date, RegExp, ArrayBuffer (resizable too) and views over cloned buffers,
  // Map, Set, Array (with extra properties), plain objects (own enumerable string keys, read by
  // [[Get]]), Error types, Blob and File; functions, symbols, promises, weak collections and
  // platform objects are a DataCloneError. `transfer` lists ArrayBuffers; they are copied, not
  // detached (see the transfer note below). Deep nesting ends in the engine's stack limit (a
  // RangeError), never a native overflow.
  // The algorithm lives in lazy.js, loaded on the first call.
  let cloneImpl = null;
  defineGlobal("structuredClone", function structuredClone(value, options) {
    if (cloneImpl === null) cloneImpl = part("lazy").structuredCloneFor(g);
    return ReflectApply(cloneImpl, undefined, arguments);
  });

  // ---- timers -----------------------------------------------------------------------------
  // One host sleep per timer; a cleared timer's sleep still ends but its callback is skipped.
  // The host refuses a timer set by work whose request has ended: it never fires.
  let nextTimerId = 1;
  const liveTimers = new MapCtor();
  function schedule(id, ms, fire) {
    promiseThen(
      sleep(ms),
      () => {
        if (mapHas(liveTimers, id)) fire();
      },
      () => mapDelete(liveTimers, id),
    );
  }
  function toDelay(ms) {
    const n = NumberCtor(ms);
    return NumberIsFinite(n) && n > 0 ? MathMin(n, 2147483647) : 0;
  }
  function setTimeout(callback, ms, ...args) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("setTimeout: the callback must be a function");
    }
    const id = nextTimerId++;
    mapSet(liveTimers, id, true);
    schedule(id, toDelay(ms), () => {
      mapDelete(liveTimers, id);
      ReflectApply(callback, undefined, args);
    });
    return id;
  }
  function setInterval(callback, ms, ...args) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("setInterval: the callback must be a function");
    }
    const id = nextTimerId++;
    const delay = MathMax(toDelay(ms), 1);
    mapSet(liveTimers, id, true);
    const tick = () => {
      schedule(id, delay, tick);
      ReflectApply(callback, undefined, args);
    };
    schedule(id, delay, tick);
    return id;
  }
  function clearTimer(id) {
    mapDelete(liveTimers, id);
  }
  defineGlobal("setTimeout", setTimeout);
  defineGlobal("setInterval", setInterval);
  defineGlobal("clearTimeout", clearTimer);
  defineGlobal("clearInterval", clearTimer);
  defineGlobal("queueMicrotask", function queueMicrotask(callback) {
    if (typeof callback !== "function") {
      throw new TypeErrorCtor("queueMicrotask: the callback must be a function");
    }
    promiseThen(RESOLVED, () => callback());
  });

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
    new Uint8ArrayCtor(array.buffer, array.byteOffset, array.byteLength).set(randomBytes(array.byteLength));
    return array;
  }
  const HEX = "0123456789abcdef";
  function randomUUID() {
    const b = randomBytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let s = "";
    for (let i = 0; i < 16; i++) {
      if (i === 4 || i === 6 || i === 8 || i === 10) s += "-";
      s += HEX[b[i] >> 4] + HEX[b[i] & 15];
    }
    return s;
  }
  // crypto.subtle and CryptoKey/SubtleCrypto: LLRT's llrt_crypto (RustCrypto and ring), set up in
  // the isolate the first time the Worker touches one of them (host.subtle runs its init, which
  // also puts a Node-style `crypto` and a `Crypto` class on the global: both are taken back).
  // Its work is native and cannot be interrupted, so what JS asks of it is bounded first:
  // data sizes are charged (reserve), key sizes, derived lengths and PBKDF2 iterations capped.
  let subtle = null;
  let cryptoClasses = null;
  const loadSubtle = () => {
    if (subtle !== null) return subtle;
    // llrt_crypto's init defines `crypto`, `Crypto`, `CryptoKey` and `SubtleCrypto` globals: the
    // classes are kept aside and every global put back as it was.
    const nativeSubtle = keepingGlobals(CRYPTO_INIT_GLOBALS, () => {
      host.subtle();
      cryptoClasses = { __proto__: null, CryptoKey: g.CryptoKey, SubtleCrypto: g.SubtleCrypto };
      return g.crypto.subtle;
    });
    settleLazyGlobals(cryptoClasses);
    subtle = part("lazy").guardedSubtle(nativeSubtle, cryptoClasses.SubtleCrypto, host.reserve);
    return subtle;
  };
  const ourCrypto = ObjectFreeze(
    ObjectCreate(ObjectPrototype, {
      getRandomValues: { value: getRandomValues, enumerable: true },
      randomUUID: { value: randomUUID, enumerable: true },
      subtle: { get: function subtle() { return loadSubtle(); }, enumerable: true },
    }),
  );
  defineGlobal("crypto", ourCrypto);
  const cryptoClass = (name) => {
    loadSubtle();
    return cryptoClasses[name];
  };
  lazyGlobal("CryptoKey", cryptoClass);
  lazyGlobal("SubtleCrypto", cryptoClass);

  // ---- fetch --------------------------------------------------------------------------------
  const checked = installFetchChecks(g);
  installBlobSlice(g);
  installStreams(g, host, checked);
  const eventNatives = installEvents(host, setTimeout);
  for (const group in CLASS_GROUPS) {
    const names = CLASS_GROUPS[group];
    const make = (name) => nativeClasses(group)[name];
    for (let i = 0; i < names.length; i++) lazyGlobal(names[i], make);
  }
  // navigator, as in Workers: who is running the code.
  defineGlobal("navigator", ObjectFreeze({ __proto__: null, userAgent: "isogate", hardwareConcurrency: 1, language: "en-US", languages: ObjectFreeze(["en-US"]) }));
  // ---- Intl ------------------------------------------------------------------------------------
  // engine/intl.js (en-US formatting, UTC), loaded on first use of `Intl` or a toLocale* method.
  {
    let intl = null;
    const loadIntl = () => {
      if (intl === null) intl = host.module("intl");
      return intl;
    };
    lazyGlobal("Intl", () => loadIntl().Intl);
    const numberValue = Number.prototype.valueOf;
    defineMethod(Number.prototype, "toLocaleString", function toLocaleString(locales, options) {
      return loadIntl().locale.number(ReflectApply(numberValue, this, []), locales, options);
    });
    if (typeof BigInt === "function") {
      const bigintValue = BigInt.prototype.valueOf;
      defineMethod(BigInt.prototype, "toLocaleString", function toLocaleString(locales, options) {
        return loadIntl().locale.number(ReflectApply(bigintValue, this, []), locales, options);
      });
    }
    for (const [name, defaults] of [["toLocaleString", "all"], ["toLocaleDateString", "date"], ["toLocaleTimeString", "time"]]) {
      defineMethod(Date.prototype, name, {
        [name](locales, options) {
          return loadIntl().locale.date(this, locales, options, defaults);
        },
      }[name]);
    }
  }
  // ---- URLPattern ------------------------------------------------------------------------------
  // The vendored urlpattern-polyfill (WHATWG URL Pattern), loaded on first use.
  lazyGlobal("URLPattern", () => host.module("urlpattern"));
  // Workers (and libraries that feature-test for a worker scope) find the global as `self`.
  defineGlobal("self", g);
  installStackTraceGuard();
  const consoleError = console.error;
  // ---- fetch() ------------------------------------------------------------------------------
  // outbound.js, loaded on the first use of `fetch`. What it needs of the native classes was
  // captured here, before any user code ran.
  const RequestSignal = ObjectGetOwnPropertyDescriptor(RequestProto, "signal").get;
  lazyGlobal("fetch", () => part("outbound").fetch);

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

  // ctx.waitUntil work: a count of unsettled promises and, once the response is out, one
  // promise that settles when the count reaches zero (work added meanwhile is counted too).
  function trackWait(waits, value) {
    waits.pending++;
    const settle = () => {
      waits.pending--;
      if (waits.pending === 0 && waits.resolve !== null) waits.resolve();
    };
    const rejected = (e) => {
      ReflectApply(consoleError, undefined, ["ctx.waitUntil promise rejected:", e]);
      settle();
    };
    try {
      // A native promise: no lookup of a (replaceable) `then` on it.
      promiseThen(value, settle, rejected);
    } catch {
      promiseThen(new PromiseCtor((resolve) => resolve(value)), settle, rejected);
    }
  }
  function waitsDone(waits) {
    if (waits.pending === 0) return null;
    return protect(
      new PromiseCtor((resolve) => {
        waits.resolve = resolve;
      }),
    );
  }

  // What every request's ctx shares (both frozen): only waitUntil is the request's own.
  const passThroughOnException = { passThroughOnException() {} }.passThroughOnException;
  const NO_PROPS = ObjectFreeze({});
  function makeCtx(waits) {
    return ObjectFreeze({
      waitUntil(promise) {
        trackWait(waits, promise);
      },
      passThroughOnException,
      props: NO_PROPS,
    });
  }

  // ---- tenant APIs and client-side tools ------------------------------------------------------
  // `env.<api>.<tool>(args)`, an execute's `<namespace>.<tool>(args)` and `ApiError`: apis.js,
  // loaded the first time an invocation has one of them or a Worker reads `ApiError`.
  lazyGlobal("ApiError", () => part("apis").ApiError);

  async function dispatch(handler, env, method, url, headers, body, streaming) {
    const waits = { __proto__: null, pending: 0, resolve: null };
    const init = { __proto__: null, method, headers };
    if (body !== null && method !== "GET" && method !== "HEAD") init.body = body;
    const request = ReflectConstruct(NativeRequest, [url, init], checked.Request);
    if (init.body === undefined) markNullBody(request);
    const response = await handler.fetch(request, env, makeCtx(waits));
    let status;
    try {
      status = ReflectApply(ResponseStatus, response, []);
    } catch {
      throw new TypeErrorCtor(
        `the fetch handler must return a Response, it returned ${describe(response)}`,
      );
    }
    // The Headers object itself: the engine reads its pairs natively.
    const outHeaders = ReflectApply(ResponseHeaders, response, []);
    const what = "the Worker's Response";
    const stream = streamBody(response);
    if (streaming && stream !== undefined) {
      // Streamed to the client: the engine pulls chunk by chunk (next) until the end.
      const pump = part("bodies").pump(stream, maxBodyBytes, what);
      return {
        __proto__: null,
        status,
        headers: outHeaders,
        body: null,
        next: pump.next,
        cancel: pump.cancel,
        waitUntil: waitsDone(waits),
      };
    }
    // A null or string body is ready now (no await); anything else is read.
    let bytes = bodyBytesNow(response, ResponseBodyUsed, maxBodyBytes, what);
    if (bytes === undefined) {
      bytes = await bodyBytes(response, ResponseArrayBuffer, ResponseBodyUsed, maxBodyBytes, what);
    }
    return {
      __proto__: null,
      status,
      headers: outHeaders,
      body: bytes,
      waitUntil: waitsDone(waits),
    };
  }

  async function execute(fn, env) {
    if (typeof fn !== "function") {
      throw new TypeErrorCtor(
        `code must evaluate to a function such as \`async (env) => { ... }\`, it evaluated to ${describe(fn)}`,
      );
    }
    const value = await fn(env);
    const json = JSONStringify(value === undefined ? null : value);
    return json === undefined ? "null" : json;
  }

  function parseEnv(json) {
    return ObjectFreeze(JSONParse(json));
  }

  makeH = () => ObjectFreeze({
    __proto__: null,
    reserve: host.reserve,
    natives: NATIVES,
    ReflectApply, ReflectConstruct, ReflectOwnKeys, ObjectDefineProperty,
    ObjectGetOwnPropertyDescriptor, ObjectFreeze, ObjectCreate, ObjectGetPrototypeOf,
    ObjectSetPrototypeOf, ObjectPrototype, ObjectToString, ObjectHasOwn, ArrayPrototype, SymbolToStringTag,
    ArrayIsArray, ArrayFrom, StringCtor, NumberCtor, MathTrunc, MathMax, MathMin, SymbolIterator,
    JSONStringify, JSONParse, TypeErrorCtor, RangeErrorCtor, ErrorCtor, DOMExceptionCtor,
    Uint8ArrayCtor, Uint8ArrayIndexOf, Uint8ArraySubarray, MapCtor, MapGet, MapSet, SetHas,
    WeakMapCtor, WeakMapGet, WeakMapSet, StringSlice, StringIndexOf, StringToLowerCase,
    StringToUpperCase, StringTrim, StringIsWellFormed, StringToWellFormed, StringReplace,
    RegExpExec, ArrayBufferByteLength, ArrayBufferIsView, ViewLength, ViewBuffer, ViewOffset,
    DataViewLength, DataViewBuffer, DataViewOffset, ArrayBufferSlice, Uint8ArraySet,
    charCodeAt, push, mapHas, mapSet, mapDelete, hasBrand, isHttpWhitespace, consoleError,
    defineMethod, defineGlobal, GuardedFile, part, global: g, STREAM_GLOBALS, overLimit, isUnusable,
    host, checked, loadStreams, NativeResponse, NULL_BODY_STATUS,
    HeadersForEach, RequestHeaders, RequestMethod, RequestUrl, RequestArrayBuffer,
    RequestBodyUsed, RequestSignal, eventNatives, maxBodyBytes, streamBody,
    setStreamBody, isNullBody, markNullBody, bodyBytes, isRequestObject, nativeClasses,
    describe, ArrayJoin, ProxyCtor,
  });

  return {
    __proto__: null,
    dispatch: (...args) => protect(ReflectApply(dispatch, undefined, args)),
    execute: (fn, env) => protect(execute(fn, env)),
    withApis: (env, apis) => part("apis").withApis(env, apis),
    clientTools: (factory, spec) => part("apis").clientTools(factory, spec),
    workerHandler,
    parseEnv,
    protect,
  };
}
