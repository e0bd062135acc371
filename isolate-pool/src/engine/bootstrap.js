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
const URLCtor = URL;
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
/** The getters lazyGlobal installed (to tell them from a Worker's own accessor). */
const LAZY_GETTERS = new WeakSet();
/**
 * A global made on first access: `make()` returns its value, which then replaces the accessor.
 * The Worker may assign the global before that (it is then the Worker's).
 */
function lazyGlobal(name, make) {
  const get = function () {
    const value = make();
    defineGlobal(name, value);
    return value;
  };
  ReflectApply(WeakSetAdd, LAZY_GETTERS, [get]);
  ObjectDefineProperty(globalThis, name, {
    __proto__: null,
    get,
    set(value) {
      defineGlobal(name, value);
    },
    enumerable: false,
    configurable: true,
  });
}
/** Replaces the globals in `values` that are still lazyGlobal accessors by their values (a part
 * that loads several globals settles them all at once). */
function settleLazyGlobals(values) {
  for (const name in values) {
    const desc = ObjectGetOwnPropertyDescriptor(globalThis, name);
    if (desc !== undefined && desc.get !== undefined && ReflectApply(WeakSetHas, LAZY_GETTERS, [desc.get])) {
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
      href = new URLCtor(StringCtor(url)).href;
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

// ---- form data ---------------------------------------------------------------------------------
// LLRT's `formData()` parses multipart bodies line by line (values keep the CRLF before the next
// delimiter, empty values are lost) and answers urlencoded bodies with an empty FormData. These
// parse the body bytes by the HTML standard's rules instead: urlencoded through URLSearchParams,
// multipart by delimiters on the bytes, each part a string (UTF-8) or, with a filename, a File.
// A body that is neither, or a malformed one, is a TypeError (the body is consumed either way).
const CR = 13;
const LF = 10;
const DASH = 45;
function indexOfBytes(bytes, needle, from) {
  const first = needle[0];
  const last = bytes.length - needle.length;
  for (let i = ReflectApply(Uint8ArrayIndexOf, bytes, [first, from]); i !== -1 && i <= last;
    i = ReflectApply(Uint8ArrayIndexOf, bytes, [first, i + 1])) {
    let j = 1;
    while (j < needle.length && bytes[i + j] === needle[j]) j++;
    if (j === needle.length) return i;
  }
  return -1;
}
function asciiBytes(s) {
  const out = new Uint8ArrayCtor(s.length);
  for (let i = 0; i < s.length; i++) out[i] = charCodeAt(s, i) & 0xff;
  return out;
}
function mimeEssence(contentType) {
  const semi = ReflectApply(StringIndexOf, contentType, [";"]);
  const essence = semi === -1 ? contentType : ReflectApply(StringSlice, contentType, [0, semi]);
  return ReflectApply(StringToLowerCase, ReflectApply(StringTrim, essence, []), []);
}
/** The value of parameter `name` in a header value's `; name=value` list, or undefined. */
function headerParam(value, name) {
  let i = ReflectApply(StringIndexOf, value, [";"]);
  while (i !== -1 && i < value.length) {
    i++;
    while (i < value.length && isHttpWhitespace(charCodeAt(value, i))) i++;
    const eq = ReflectApply(StringIndexOf, value, ["=", i]);
    if (eq === -1) return undefined;
    const key = ReflectApply(StringToLowerCase, ReflectApply(StringTrim, ReflectApply(StringSlice, value, [i, eq]), []), []);
    let j = eq + 1;
    let v = "";
    if (charCodeAt(value, j) === 34) {
      j++;
      while (j < value.length && charCodeAt(value, j) !== 34) {
        if (charCodeAt(value, j) === 92 && j + 1 < value.length) j++;
        v += value[j];
        j++;
      }
      j++;
    } else {
      let end = ReflectApply(StringIndexOf, value, [";", j]);
      if (end === -1) end = value.length;
      v = ReflectApply(StringTrim, ReflectApply(StringSlice, value, [j, end]), []);
      j = end;
    }
    if (key === name) return v;
    i = ReflectApply(StringIndexOf, value, [";", j]);
  }
  return undefined;
}
function formDataFrom(g, what, contentType, bytes, decode) {
  const essence = mimeEssence(contentType);
  const form = new g.FormData();
  const append = g.FormData.prototype.append;
  if (essence === "application/x-www-form-urlencoded") {
    const params = new g.URLSearchParams(decode(bytes));
    ReflectApply(g.URLSearchParams.prototype.forEach, params, [
      (value, name) => ReflectApply(append, form, [name, value]),
    ]);
    return form;
  }
  if (essence !== "multipart/form-data") {
    throw new TypeErrorCtor(`${what}: a body of type ${JSONStringify(contentType)} is not form data`);
  }
  const boundary = headerParam(contentType, "boundary");
  if (boundary === undefined || boundary.length === 0 || boundary.length > 70) {
    throw new TypeErrorCtor(`${what}: multipart/form-data without a valid boundary`);
  }
  const malformed = () => new TypeErrorCtor(`${what}: the multipart/form-data body is malformed`);
  const delimiter = asciiBytes("--" + boundary);
  const next = asciiBytes("\r\n--" + boundary);
  // The first delimiter opens the body or follows a preamble line.
  let at = 0;
  while (true) {
    at = indexOfBytes(bytes, delimiter, at);
    if (at === -1) throw malformed();
    if (at === 0 || (bytes[at - 2] === CR && bytes[at - 1] === LF)) break;
    at++;
  }
  at += delimiter.length;
  while (true) {
    if (bytes[at] === DASH && bytes[at + 1] === DASH) return form;
    while (bytes[at] === 32 || bytes[at] === 9) at++;
    if (bytes[at] !== CR || bytes[at + 1] !== LF) throw malformed();
    at += 2;
    let name;
    let filename;
    let type;
    while (!(bytes[at] === CR && bytes[at + 1] === LF)) {
      const eol = indexOfBytes(bytes, CRLF_BYTES, at);
      if (eol === -1) throw malformed();
      const line = decode(ReflectApply(Uint8ArraySubarray, bytes, [at, eol]));
      at = eol + 2;
      const colon = ReflectApply(StringIndexOf, line, [":"]);
      if (colon <= 0) throw malformed();
      const header = ReflectApply(StringToLowerCase, ReflectApply(StringTrim, ReflectApply(StringSlice, line, [0, colon]), []), []);
      const value = ReflectApply(StringTrim, ReflectApply(StringSlice, line, [colon + 1]), []);
      if (header === "content-disposition") {
        if (mimeEssence(value) !== "form-data") throw malformed();
        name = headerParam(value, "name");
        filename = headerParam(value, "filename");
      } else if (header === "content-type") {
        type = value;
      }
    }
    at += 2;
    if (name === undefined) throw malformed();
    const end = indexOfBytes(bytes, next, at);
    if (end === -1) throw malformed();
    const content = ReflectApply(Uint8ArraySubarray, bytes, [at, end]);
    if (filename === undefined) {
      ReflectApply(append, form, [name, decode(content)]);
    } else {
      const file = new g.File([content], filename, { type: type === undefined ? "text/plain" : type });
      ReflectApply(append, form, [name, file]);
    }
    at = end + next.length;
  }
}
const CRLF_BYTES = new Uint8ArrayCtor([CR, LF]);

// ---- streams and bodies as streams ---------------------------------------------------------------
// ReadableStream, WritableStream, TransformStream and friends come from the vendored
// web-streams-polyfill (vendor/web-streams-polyfill, the WHATWG reference implementation's port).
// It is compiled to bytecode at build time but only loaded into an isolate the first time its
// Worker touches a stream global or a body's `.body`: the globals are accessors until then.
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
/** The polyfill's classes and captured methods, once loaded (null before). */
let streams = null;
/** Loads the polyfill (host.streams) once per isolate; set up by installStreams. */
let loadStreams = null;
/** `host.module`, kept by install() for the parts loaded on first use. */
let hostModule = null;
const DOMExceptionCtor = DOMException;
let lazyParts = null;
/** engine/lazy.js (subtle guards, encoding and compression streams), made once per isolate. */
function lazy() {
  if (lazyParts === null) {
    lazyParts = hostModule("lazy")(ObjectFreeze({
      __proto__: null, ReflectApply, ArrayBufferByteLength, ArrayBufferIsView, ArrayPrototype,
      DataViewLength, JSONStringify, NumberCtor, ObjectCreate, ObjectDefineProperty, ObjectFreeze,
      StringCtor, StringSlice, StringToUpperCase, TypeErrorCtor, Uint8ArrayCtor, ViewLength,
      charCodeAt, chunkBytes, DOMExceptionCtor, ObjectGetOwnPropertyDescriptor, ObjectGetPrototypeOf,
      ObjectPrototype, MapCtor, MapGet, MapSet, push, hasBrand,
    }));
  }
  return lazyParts;
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
/** The bytes of a chunk a body stream produced (a BufferSource), as a Uint8Array view. */
function chunkBytes(chunk, what) {
  if (ArrayBufferIsView(chunk)) {
    try {
      return new Uint8ArrayCtor(ReflectApply(ViewBuffer, chunk, []), ReflectApply(ViewOffset, chunk, []), ReflectApply(ViewLength, chunk, []));
    } catch {
      return new Uint8ArrayCtor(ReflectApply(DataViewBuffer, chunk, []), ReflectApply(DataViewOffset, chunk, []), ReflectApply(DataViewLength, chunk, []));
    }
  }
  try {
    ReflectApply(ArrayBufferByteLength, chunk, []);
    return new Uint8ArrayCtor(chunk);
  } catch {
    throw new TypeErrorCtor(`${what}: a body stream produced a chunk that is not a Uint8Array, ArrayBuffer or view`);
  }
}
/** A copy of a body chunk of the same type (a clone()'s second branch gets copies). */
function cloneChunk(chunk) {
  if (ArrayBufferIsView(chunk)) {
    const bytes = chunkBytes(chunk, "clone");
    const copy = ReflectApply(ArrayBufferSlice, ReflectApply(ViewBuffer, bytes, []), [bytes.byteOffset, bytes.byteOffset + bytes.length]);
    const Ctor = ObjectGetPrototypeOf(chunk).constructor;
    const unit = typeof Ctor.BYTES_PER_ELEMENT === "number" ? Ctor.BYTES_PER_ELEMENT : 1;
    return new Ctor(copy, 0, bytes.length / unit);
  }
  try {
    const n = ReflectApply(ArrayBufferByteLength, chunk, []);
    return ReflectApply(ArrayBufferSlice, chunk, [0, n]);
  } catch {
    return chunk;
  }
}
/** Reads a whole stream into one Uint8Array, refusing more than `limit` bytes. */
async function readStream(stream, limit, what) {
  if (isUnusable(stream)) throw new TypeErrorCtor(`${what}: the body has already been used`);
  const reader = ReflectApply(streams.getReader, stream, []);
  const parts = [];
  let total = 0;
  for (;;) {
    const step = await ReflectApply(streams.read, reader, []);
    if (step.done) break;
    const bytes = chunkBytes(step.value, what);
    total += bytes.length;
    if (total > limit) {
      const err = overLimit(what, limit);
      ReflectApply(streams.cancelReader, reader, [err]);
      throw err;
    }
    push(parts, bytes);
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8ArrayCtor(total);
  let at = 0;
  for (let i = 0; i < parts.length; i++) {
    ReflectApply(Uint8ArraySet, out, [parts[i], at]);
    at += parts[i].length;
  }
  return out;
}
/**
 * The body of a Request/Response as bytes, consuming it. `nativeArrayBuffer` is the class's
 * own reader (its brand check rejects other objects); `nativeUsed` its bodyUsed getter.
 */
async function bodyBytes(obj, nativeArrayBuffer, nativeUsed, limit, what) {
  const stream = streamBody(obj);
  if (stream !== undefined) return readStream(stream, limit, what);
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
/** A byte stream with one chunk, produced by `read()` on the first pull (never before). */
function lazyByteStream(read) {
  return new streams.ReadableStream({
    type: "bytes",
    async pull(controller) {
      const bytes = await read();
      if (bytes.length > 0) controller.enqueue(bytes);
      controller.close();
      const request = controller.byobRequest;
      if (request) request.respond(0);
    },
  });
}

function installStreams(g, host, wrappers) {
  hostModule = host.module;
  let classes = null;
  loadStreams = function load() {
    if (streams !== null) return streams;
    const ns = hostModule("streams");
    const RS = ns.ReadableStream;
    const TS = ns.TransformStream;
    const readerProto = ns.ReadableStreamDefaultReader.prototype;
    streams = {
      __proto__: null,
      ReadableStream: RS,
      TransformStream: TS,
      locked: ObjectGetOwnPropertyDescriptor(RS.prototype, "locked").get,
      getReader: RS.prototype.getReader,
      tee: RS.prototype.tee,
      cancel: RS.prototype.cancel,
      pipeThrough: RS.prototype.pipeThrough,
      read: readerProto.read,
      cancelReader: readerProto.cancel,
    };
    classes = { __proto__: null };
    for (const name of STREAM_GLOBALS) classes[name] = ns[name];
    const parts = lazy();
    classes.TextEncoderStream = parts.textEncoderStream(g, TS);
    classes.TextDecoderStream = parts.textDecoderStream(g, TS);
    classes.CompressionStream = parts.compressionStream(TS, host.codec, host.reserve, true);
    classes.DecompressionStream = parts.compressionStream(TS, host.codec, host.reserve, false);
    // WebIDL attributes are enumerable (class accessors are not); instances have a class string.
    for (const ctor of [classes.TextEncoderStream, classes.TextDecoderStream, classes.CompressionStream, classes.DecompressionStream]) {
      ObjectDefineProperty(ctor.prototype, Symbol.toStringTag, { __proto__: null, value: ctor.name, configurable: true });
      for (const key of ReflectOwnKeys(ctor.prototype)) {
        const desc = ObjectGetOwnPropertyDescriptor(ctor.prototype, key);
        if (desc.get !== undefined) {
          desc.enumerable = true;
          ObjectDefineProperty(ctor.prototype, key, desc);
        }
      }
    }
    settleLazyGlobals(classes);
    return streams;
  };
  for (const name of [...STREAM_GLOBALS, "TextEncoderStream", "TextDecoderStream", "CompressionStream", "DecompressionStream"]) {
    lazyGlobal(name, () => {
      loadStreams();
      return classes[name];
    });
  }

  // UTF-8 decoding of body bytes (BOM stripped), with one decoder made on first use.
  const TextDecoderCtor = g.TextDecoder;
  const decode = TextDecoderCtor.prototype.decode;
  let decoder = null;
  const utf8 = (bytes) => {
    if (decoder === null) decoder = new TextDecoderCtor();
    return ReflectApply(decode, decoder, [bytes]);
  };
  // The Body mixin of Request and Response, over the native classes.
  for (const [nativeProto, what] of [[RequestProto, "Request"], [ResponseProto, "Response"]]) {
    const proto = wrappers[what].prototype;
    const nativeArrayBuffer = nativeProto.arrayBuffer;
    const nativeUsed = ObjectGetOwnPropertyDescriptor(nativeProto, "bodyUsed").get;
    const nativeClone = nativeProto.clone;
    const nativeHeaders = nativeProto === RequestProto ? RequestHeaders : ResponseHeaders;
    const contentType = (obj) => ReflectApply(HeadersGet, ReflectApply(nativeHeaders, obj, []), ["content-type"]);
    const read = (obj, method) => bodyBytes(obj, nativeArrayBuffer, nativeUsed, Infinity, `${what}.${method}`);
    function bodyOf(obj) {
      const existing = streamBody(obj);
      if (existing !== undefined) return existing;
      const used = isUsedNative(obj, nativeUsed);
      if (isNullBody(obj)) return null;
      loadStreams();
      let stream;
      if (used) {
        // Read by a consumer: a stream that is disturbed and stays locked, as after a read.
        stream = new streams.ReadableStream();
        ReflectApply(streams.cancelReader, ReflectApply(streams.getReader, stream, []), []);
      } else {
        stream = lazyByteStream(() => readNative(obj, nativeArrayBuffer));
      }
      setStreamBody(obj, stream);
      return stream;
    }
    function bodyUsed(obj) {
      const stream = streamBody(obj);
      if (stream !== undefined) return stream._disturbed === true;
      return isUsedNative(obj, nativeUsed);
    }
    ObjectDefineProperty(proto, "body", {
      __proto__: null,
      get: function body() {
        return bodyOf(this);
      },
      enumerable: true,
      configurable: true,
    });
    ObjectDefineProperty(proto, "bodyUsed", {
      __proto__: null,
      get: function bodyUsedGetter() {
        return bodyUsed(this);
      },
      enumerable: true,
      configurable: true,
    });
    defineMethod(proto, "arrayBuffer", async function arrayBuffer() {
      const bytes = await read(this, "arrayBuffer");
      const buffer = ReflectApply(ViewBuffer, bytes, []);
      if (bytes.byteOffset === 0 && bytes.length === ReflectApply(ArrayBufferByteLength, buffer, [])) return buffer;
      return ReflectApply(ArrayBufferSlice, buffer, [bytes.byteOffset, bytes.byteOffset + bytes.length]);
    });
    defineMethod(proto, "bytes", async function bytes() {
      return read(this, "bytes");
    });
    defineMethod(proto, "text", async function text() {
      return utf8(await read(this, "text"));
    });
    // `json()` is JSON.parse of the body's text (LLRT's own parser rejects what JSON allows, such
    // as escaped lone surrogates, and throws a plain Error where the standard says SyntaxError).
    defineMethod(proto, "json", async function json() {
      return JSONParse(utf8(await read(this, "json")));
    });
    const BlobCtor = g.Blob;
    defineMethod(proto, "blob", async function blob() {
      const type = contentType(this);
      const bytes = await read(this, "blob");
      return new BlobCtor([bytes], { type: type === null ? "" : type });
    });
    defineMethod(proto, "formData", async function formData() {
      const type = contentType(this);
      const bytes = await read(this, "formData");
      return formDataFrom(g, `${what}.formData`, type === null ? "" : type, bytes, utf8);
    });
    defineMethod(proto, "clone", function clone() {
      if (bodyUsed(this)) throw new TypeErrorCtor(`${what}.clone: the body has already been used`);
      const stream = streamBody(this);
      if (stream !== undefined && ReflectApply(streams.locked, stream, [])) {
        throw new TypeErrorCtor(`${what}.clone: the body is locked`);
      }
      const copy = ReflectApply(nativeClone, this, []);
      ObjectSetPrototypeOf(copy, ObjectGetPrototypeOf(this));
      if (isNullBody(this)) markNullBody(copy);
      const text = ReflectApply(WeakMapGet, PROVIDED_TEXT, [this]);
      if (text !== undefined) setProvidedText(copy, text);
      if (stream !== undefined) {
        // The standard tees with the second branch's chunks cloned, so that neither reader can
        // change the bytes the other sees.
        const branches = ReflectApply(streams.tee, stream, []);
        setStreamBody(this, branches[0]);
        setStreamBody(copy, ReflectApply(streams.pipeThrough, branches[1], [new streams.TransformStream({
          transform(chunk, controller) {
            controller.enqueue(cloneChunk(chunk));
          },
        })]));
      }
      // A fetch() response's own url/redirected (see fetch below) belong to the copy too.
      for (const key of ["url", "redirected"]) {
        if (ObjectHasOwn(this, key)) ObjectDefineProperty(copy, key, ObjectGetOwnPropertyDescriptor(this, key));
      }
      return copy;
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
    return lazyByteStream(async () => new Uint8ArrayCtor(await ReflectApply(blobArrayBuffer, blob, [])));
  });
}

// ---- events --------------------------------------------------------------------------------------
// LLRT's EventTarget keeps plain function lists and its Event has no dispatch state. Over them,
// per the DOM standard: listeners may be objects with handleEvent, null is ignored, a listener is
// registered once per (type, callback, capture), `once`, `signal` and `capture` options,
// preventDefault/defaultPrevented (and dispatchEvent's result), stopPropagation,
// stopImmediatePropagation, target/currentTarget/eventPhase, and a listener's exception is
// reported (console.error) instead of stopping the dispatch. Each registration is a wrapper
// function in LLRT's list; the wrapper checks the event's state before calling the listener.
function installEvents(g) {
  const EventCtor = g.Event;
  const EventProto = EventCtor.prototype;
  const eventType = ObjectGetOwnPropertyDescriptor(EventProto, "type").get;
  const eventCancelable = ObjectGetOwnPropertyDescriptor(EventProto, "cancelable").get;
  const WeakMapCtor = WeakMap;
  const WeakMapGet = WeakMap.prototype.get;
  const WeakMapSet = WeakMap.prototype.set;
  const MapGet = Map.prototype.get;
  const consoleError = console.error;
  const states = new WeakMapCtor();
  function stateOf(event) {
    let st = ReflectApply(WeakMapGet, states, [event]);
    if (st === undefined) {
      st = { __proto__: null, canceled: false, stop: false, stopImmediate: false, target: null, current: null, phase: 0, dispatching: false };
      ReflectApply(WeakMapSet, states, [event, st]);
    }
    return st;
  }
  // LLRT's CustomEvent is a class of its own (not an Event subclass natively).
  const typeGetters = [eventType];
  if (typeof g.CustomEvent === "function") {
    let p = g.CustomEvent.prototype;
    while (p !== null && p !== EventProto) {
      const d = ObjectGetOwnPropertyDescriptor(p, "type");
      if (d !== undefined && typeof d.get === "function") {
        push(typeGetters, d.get);
        break;
      }
      p = ObjectGetPrototypeOf(p);
    }
  }
  function isEvent(value) {
    if (value === null || typeof value !== "object") return false;
    for (let i = 0; i < typeGetters.length; i++) {
      try {
        ReflectApply(typeGetters[i], value, []);
        return true;
      } catch {}
    }
    return false;
  }
  const accessor = (name, get, set) =>
    ObjectDefineProperty(EventProto, name, { __proto__: null, get, set, enumerable: true, configurable: true });
  defineMethod(EventProto, "preventDefault", function preventDefault() {
    if (ReflectApply(eventCancelable, this, [])) stateOf(this).canceled = true;
  });
  accessor("defaultPrevented", function defaultPrevented() {
    ReflectApply(eventType, this, []);
    return stateOf(this).canceled;
  });
  accessor("returnValue", function returnValue() {
    ReflectApply(eventType, this, []);
    return !stateOf(this).canceled;
  }, function returnValue(v) {
    if (!v && ReflectApply(eventCancelable, this, [])) stateOf(this).canceled = true;
  });
  defineMethod(EventProto, "stopPropagation", function stopPropagation() {
    ReflectApply(eventType, this, []);
    stateOf(this).stop = true;
  });
  accessor("cancelBubble", function cancelBubble() {
    ReflectApply(eventType, this, []);
    return stateOf(this).stop;
  }, function cancelBubble(v) {
    if (v) stateOf(this).stop = true;
  });
  defineMethod(EventProto, "stopImmediatePropagation", function stopImmediatePropagation() {
    ReflectApply(eventType, this, []);
    const st = stateOf(this);
    st.stop = true;
    st.stopImmediate = true;
  });
  accessor("target", function target() {
    ReflectApply(eventType, this, []);
    return stateOf(this).target;
  });
  accessor("srcElement", function srcElement() {
    ReflectApply(eventType, this, []);
    return stateOf(this).target;
  });
  accessor("currentTarget", function currentTarget() {
    ReflectApply(eventType, this, []);
    return stateOf(this).current;
  });
  accessor("eventPhase", function eventPhase() {
    ReflectApply(eventType, this, []);
    return stateOf(this).phase;
  });
  accessor("isTrusted", function isTrusted() {
    ReflectApply(eventType, this, []);
    return false;
  });
  defineMethod(EventProto, "composedPath", function composedPath() {
    const st = stateOf(this);
    return st.dispatching && st.current !== null ? [st.current] : [];
  });
  for (const [name, value] of [["NONE", 0], ["CAPTURING_PHASE", 1], ["AT_TARGET", 2], ["BUBBLING_PHASE", 3]]) {
    ObjectDefineProperty(EventCtor, name, { __proto__: null, value, enumerable: true });
    ObjectDefineProperty(EventProto, name, { __proto__: null, value, enumerable: true });
  }

  function wrapTarget(proto) {
    const nativeAdd = proto.addEventListener;
    const nativeRemove = proto.removeEventListener;
    const nativeDispatch = proto.dispatchEvent;
    if (typeof nativeAdd !== "function" || typeof nativeDispatch !== "function") return;
    // target -> Map(key -> wrapper), key = type + capture + the callback's identity.
    const registry = new WeakMapCtor();
    function listenersOf(target) {
      let m = ReflectApply(WeakMapGet, registry, [target]);
      if (m === undefined) {
        m = new MapCtor();
        ReflectApply(WeakMapSet, registry, [target, m]);
      }
      return m;
    }
    // Per (type, capture), the callbacks registered, mapped to their wrappers.
    function slot(target, type, capture) {
      const all = listenersOf(target);
      const key = (capture ? "c:" : "b:") + type;
      let m = ReflectApply(MapGet, all, [key]);
      if (m === undefined) {
        m = new MapCtor();
        mapSet(all, key, m);
      }
      return m;
    }
    function flags(options) {
      if (options === undefined || options === null) return { capture: false, once: false, signal: undefined };
      if (typeof options !== "object" && typeof options !== "function") return { capture: !!options, once: false, signal: undefined };
      const signal = options.signal;
      if (signal !== undefined && (signal === null || typeof signal !== "object")) {
        throw new TypeErrorCtor("addEventListener: options.signal must be an AbortSignal");
      }
      return { capture: !!options.capture, once: !!options.once, signal };
    }
    defineMethod(proto, "addEventListener", function addEventListener(type, callback, options) {
      const { capture, once, signal } = flags(options);
      if (callback === null || callback === undefined) return undefined;
      if (typeof callback !== "function" && typeof callback !== "object") {
        throw new TypeErrorCtor("addEventListener: the listener must be a function or an object");
      }
      type = StringCtor(type);
      if (signal !== undefined && signal.aborted) return undefined;
      const listeners = slot(this, type, capture);
      if (mapHas(listeners, callback)) return undefined;
      const target = this;
      const wrapper = function (event) {
        const st = isEvent(event) ? stateOf(event) : null;
        if (st !== null && st.stopImmediate) return;
        if (!mapHas(listeners, callback)) return;
        if (once) remove();
        try {
          if (typeof callback === "function") {
            ReflectApply(callback, target, [event]);
          } else {
            const handle = callback.handleEvent;
            if (typeof handle !== "function") throw new TypeErrorCtor("the listener has no handleEvent method");
            ReflectApply(handle, callback, [event]);
          }
        } catch (e) {
          ReflectApply(consoleError, console, ["Uncaught (in event listener)", e]);
        }
      };
      function remove() {
        if (ReflectApply(MapGet, listeners, [callback]) !== wrapper) return;
        mapDelete(listeners, callback);
        ReflectApply(nativeRemove, target, [type, wrapper]);
      }
      mapSet(listeners, callback, wrapper);
      ReflectApply(nativeAdd, this, [type, wrapper]);
      if (signal !== undefined) {
        ReflectApply(nativeSignalAdd(signal), signal, ["abort", remove]);
      }
      return undefined;
    });
    defineMethod(proto, "removeEventListener", function removeEventListener(type, callback, options) {
      if (callback === null || callback === undefined) return undefined;
      type = StringCtor(type);
      const { capture } = flags(options);
      const listeners = slot(this, type, capture);
      const wrapper = ReflectApply(MapGet, listeners, [callback]);
      if (wrapper === undefined) return undefined;
      mapDelete(listeners, callback);
      ReflectApply(nativeRemove, this, [type, wrapper]);
      return undefined;
    });
    defineMethod(proto, "dispatchEvent", function dispatchEvent(event) {
      if (!isEvent(event)) throw new TypeErrorCtor("dispatchEvent: the argument is not an Event");
      const st = stateOf(event);
      if (st.dispatching) {
        throw new DOMException("dispatchEvent: the event is already being dispatched", "InvalidStateError");
      }
      st.dispatching = true;
      st.target = this;
      st.current = this;
      st.phase = 2;
      st.stopImmediate = false;
      try {
        if (!st.stop) ReflectApply(nativeDispatch, this, [event]);
      } finally {
        st.dispatching = false;
        st.current = null;
        st.phase = 0;
        st.stop = false;
        st.stopImmediate = false;
      }
      return !st.canceled;
    });
    natives.push([proto, nativeAdd]);
  }
  // A signal's own (native) addEventListener, for `{ signal }` removal without our wrapper.
  const natives = [];
  function nativeSignalAdd(signal) {
    for (let i = 0; i < natives.length; i++) {
      let p = ObjectGetPrototypeOf(signal);
      while (p !== null) {
        if (p === natives[i][0]) return natives[i][1];
        p = ObjectGetPrototypeOf(p);
      }
    }
    return signal.addEventListener;
  }
  wrapTarget(g.EventTarget.prototype);
  if (typeof g.AbortSignal === "function" && g.AbortSignal.prototype.addEventListener !== g.EventTarget.prototype.addEventListener) {
    wrapTarget(g.AbortSignal.prototype);
  }
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
  function makeSanitize() {
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
      const user = userPrepare;
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
  ObjectDefineProperty(ErrorCtor, "prepareStackTrace", {
    __proto__: null,
    get: function prepareStackTrace() {
      return userPrepare;
    },
    set: function prepareStackTrace(value) {
      if (typeof value === "function" && sanitize === null) sanitize = makeSanitize();
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
      defineGlobal(name, Wrapper);
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
    // Lone surrogates become U+FFFD (USVString conversion) instead of a native TypeError.
    function usv(value) {
      const s = StringCtor(value);
      return ReflectApply(StringIsWellFormed, s, []) ? s : ReflectApply(StringToWellFormed, s, []);
    }
    replaceValue(encoderProto, "encode", function encode(...args) {
      if (args.length > 0 && args[0] !== undefined) {
        args[0] = usv(args[0]);
        reserve(args[0].length);
      }
      return ReflectApply(nativeEncode, this, args);
    });
    replaceValue(encoderProto, "encodeInto", function encodeInto(...args) {
      if (args.length > 0) {
        args[0] = usv(args[0]);
        reserve(args[0].length);
      }
      return ReflectApply(nativeEncodeInto, this, args);
    });
    const decoderProto = g.TextDecoder.prototype;
    const nativeDecode = decoderProto.decode;
    const typedArrayBuffer = getter(getProto(Uint8Array.prototype), "buffer");
    const typedArrayOffset = getter(getProto(Uint8Array.prototype), "byteOffset");
    const dataViewBuffer = getter(DataView.prototype, "buffer");
    const dataViewOffset = getter(DataView.prototype, "byteOffset");
    // The native decoder reads a Uint8Array or an ArrayBuffer: any other view is passed as a
    // Uint8Array over the same bytes.
    function asBytes(value) {
      if (!isView(value) || tagOf(value) === "[object Uint8Array]") return value;
      const length = brand(typedArrayLength, value);
      if (length >= 0) {
        return new Uint8Array(ReflectApply(typedArrayBuffer, value, []), ReflectApply(typedArrayOffset, value, []), length);
      }
      return new Uint8Array(
        ReflectApply(dataViewBuffer, value, []),
        ReflectApply(dataViewOffset, value, []),
        ReflectApply(dataViewLength, value, []),
      );
    }
    replaceValue(decoderProto, "decode", function decode(...args) {
      reserve(copiedLength(args[0]));
      if (args.length > 0) args[0] = asBytes(args[0]);
      return ReflectApply(nativeDecode, this, args);
    });

    // atob / btoa
    const nativeAtob = g.atob;
    const nativeBtoa = g.btoa;
    // Forgiving-base64 (HTML standard): ASCII whitespace is ignored, padding is optional, and
    // anything else that is not base64 is a DOMException "InvalidCharacterError".
    const ASCII_WHITESPACE = /[\t\n\f\r ]/g;
    const NOT_BASE64 = /[^A-Za-z0-9+/]/;
    defineGlobal("atob", function atob(...args) {
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
        throw new DOMException("atob: the string is not correctly base64-encoded", "InvalidCharacterError");
      }
      while (s.length % 4 !== 0) s += "=";
      return ReflectApply(nativeAtob, undefined, [s]);
    });
    defineGlobal("btoa", function btoa(...args) {
      if (args.length > 0) {
        args[0] = StringCtor(args[0]);
        reserve(args[0].length * 2);
      }
      return ReflectApply(nativeBtoa, undefined, args);
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
    if (cloneImpl === null) cloneImpl = lazy().structuredCloneFor(g);
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
    const saved = { __proto__: null };
    for (const name of ["CryptoKey", "SubtleCrypto"]) saved[name] = ObjectGetOwnPropertyDescriptor(g, name);
    host.subtle();
    const nativeSubtle = g.crypto.subtle;
    cryptoClasses = { __proto__: null, CryptoKey: g.CryptoKey, SubtleCrypto: g.SubtleCrypto };
    defineGlobal("crypto", ourCrypto);
    delete g.Crypto;
    for (const name in saved) {
      if (saved[name] === undefined) delete g[name];
      else ObjectDefineProperty(g, name, saved[name]);
    }
    settleLazyGlobals(cryptoClasses);
    subtle = lazy().guardedSubtle(nativeSubtle, cryptoClasses.SubtleCrypto, host.reserve);
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
  for (const name of ["CryptoKey", "SubtleCrypto"]) {
    lazyGlobal(name, () => {
      loadSubtle();
      return cryptoClasses[name];
    });
  }

  // ---- fetch --------------------------------------------------------------------------------
  const checked = installFetchChecks(g);
  installBlobSlice(g);
  installStreams(g, host, checked);
  installEvents(g);
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
  const abortFetch = host.abortFetch;
  let nextFetchId = 1;
  const RequestSignal = ObjectGetOwnPropertyDescriptor(RequestProto, "signal").get;
  const SignalProto = AbortSignal.prototype;
  const SignalAborted = ObjectGetOwnPropertyDescriptor(SignalProto, "aborted").get;
  const SignalReason = ObjectGetOwnPropertyDescriptor(SignalProto, "reason").get;
  const SignalAddEventListener = SignalProto.addEventListener;
  const SignalRemoveEventListener = SignalProto.removeEventListener;
  const readFetchBody = host.readFetchBody;
  const cancelFetchBody = host.cancelFetchBody;
  /**
   * A streamed fetch() response body: the bytes that came with the head, then the rest as the
   * upstream sends it (`readFetchBody`, paced by the reads); cancelling it drops the upstream.
   */
  function fetchBodyStream(first, id) {
    loadStreams();
    let head = first.length > 0 ? first : null;
    return new streams.ReadableStream({
      type: "bytes",
      async pull(controller) {
        let chunk = head;
        head = null;
        if (chunk === null) chunk = await readFetchBody(id);
        if (chunk === undefined) {
          controller.close();
          const request = controller.byobRequest;
          if (request) request.respond(0);
          return;
        }
        controller.enqueue(chunk);
      },
      cancel() {
        cancelFetchBody(id);
      },
    });
  }
  async function fetch(input, init) {
    const request = new checked.Request(input, init);
    const headers = [];
    ReflectApply(HeadersForEach, ReflectApply(RequestHeaders, request, []), [
      (value, name) => push(headers, [name, value]),
    ]);
    const method = ReflectApply(RequestMethod, request, []);
    let body = null;
    if (method !== "GET" && method !== "HEAD" && (streamBody(request) !== undefined || !isNullBody(request))) {
      body = await bodyBytes(request, RequestArrayBuffer, RequestBodyUsed, maxBodyBytes, "fetch");
    }
    let redirect = init !== undefined && init !== null ? init.redirect : undefined;
    if (!redirect && isRequestObject(input)) redirect = input.redirect;
    const url = ReflectApply(RequestUrl, request, []);
    // The request's signal (init's, else the input Request's): aborting it rejects this fetch()
    // with the signal's reason and drops the upstream request (host.abortFetch).
    // (init's own signal when given: the Request's is a follower LLRT aborts a step later.)
    const initSignal = init !== undefined && init !== null ? init.signal : undefined;
    const signal = initSignal !== undefined && initSignal !== null ? initSignal : ReflectApply(RequestSignal, request, []);
    if (signal && ReflectApply(SignalAborted, signal, [])) throw ReflectApply(SignalReason, signal, []);
    let res;
    if (!signal) {
      res = await hostFetch(method, url, headers, body, StringCtor(redirect || "follow"), 0);
    } else {
      const id = nextFetchId++;
      let aborted = false;
      const onAbort = () => {
        aborted = true;
        abortFetch(id);
      };
      ReflectApply(SignalAddEventListener, signal, ["abort", onAbort]);
      try {
        res = await hostFetch(method, url, headers, body, StringCtor(redirect || "follow"), id);
      } catch (e) {
        if (aborted) throw ReflectApply(SignalReason, signal, []);
        throw e;
      } finally {
        ReflectApply(SignalRemoveEventListener, signal, ["abort", onAbort]);
      }
    }
    const nullBody = ReflectApply(SetHas, NULL_BODY_STATUS, [res.status]) || method === "HEAD";
    const streamed = res.stream !== undefined;
    if (streamed && nullBody) cancelFetchBody(res.stream);
    const response = ReflectConstruct(NativeResponse, [nullBody || streamed ? null : res.body, {
      __proto__: null,
      status: res.status,
      headers: res.headers,
    }], checked.Response);
    if (nullBody) markNullBody(response);
    else if (streamed) setStreamBody(response, fetchBodyStream(res.body, res.stream));
    // The response's URL (after redirects) and whether a redirect was followed; LLRT's class
    // has no way to set them, so they are own read-only properties of the response.
    const finalUrl = res.url === "" ? url : res.url;
    ObjectDefineProperty(response, "url", { __proto__: null, value: finalUrl, enumerable: false });
    ObjectDefineProperty(response, "redirected", { __proto__: null, value: res.redirected, enumerable: false });
    return response;
  }
  defineGlobal("fetch", fetch);

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

  // ---- tenant APIs: `await env.<api>.<tool>(args)` -------------------------------------------
  // Each API is a binding object whose every property is a tool function; the gateway decides
  // per call whether the API and tool exist and checks the arguments. `then` is never a tool, so
  // that `await env.<api>` does not call one.
  const hostApi = host.api;
  const ProxyCtor = Proxy;
  const API_ERROR_FIELDS = ObjectFreeze(["code", "api", "tool", "rule", "reason", "hint", "status"]);
  function ApiError(message, fields) {
    const error = ReflectConstruct(ErrorCtor, [message], new.target || ApiError);
    ObjectDefineProperty(error, "name", { __proto__: null, value: "ApiError", writable: true, configurable: true });
    const keys = API_ERROR_FIELDS;
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      const value = fields[key];
      if (value !== undefined && value !== null) {
        ObjectDefineProperty(error, key, { __proto__: null, value, writable: true, enumerable: true, configurable: true });
      }
    }
    return error;
  }
  ObjectSetPrototypeOf(ApiError.prototype, ErrorCtor.prototype);
  ObjectSetPrototypeOf(ApiError, ErrorCtor);
  ObjectDefineProperty(globalThis, "ApiError", { __proto__: null, value: ApiError, writable: true, configurable: true });

  async function callApi(api, tool, args) {
    const what = `env.${api}.${tool}()`;
    if (args === undefined) args = {};
    if (args === null || typeof args !== "object" || ArrayIsArray(args)) {
      throw new TypeErrorCtor(`${what} takes one object of arguments, it was given ${describe(args)}`);
    }
    let json;
    try {
      json = JSONStringify(args);
    } catch (e) {
      throw new TypeErrorCtor(`${what}: the arguments cannot be sent as JSON (${e && e.message})`);
    }
    const out = await hostApi(api, tool, json, false);
    const error = out.error;
    if (error !== undefined) {
      throw new ApiError(`${what}: ${error.message}`, {
        __proto__: null,
        code: error.code,
        api,
        tool,
        rule: error.rule,
        reason: error.reason,
        hint: error.hint,
        status: error.status,
      });
    }
    return JSONParse(out.value);
  }

  function apiBinding(api) {
    const tools = new MapCtor();
    return new ProxyCtor(ObjectCreate(null), {
      __proto__: null,
      get(_, tool) {
        if (typeof tool !== "string" || tool === "then") return undefined;
        let fn = ReflectApply(MapGet, tools, [tool]);
        if (fn === undefined) {
          fn = (args) => callApi(api, tool, args);
          ReflectApply(MapSet, tools, [tool, fn]);
        }
        return fn;
      },
      has(_, tool) {
        return typeof tool === "string" && tool !== "then";
      },
      set() {
        return false;
      },
      defineProperty() {
        return false;
      },
      deleteProperty() {
        return false;
      },
    });
  }

  // ---- client-side tools of an execute: `<namespace>.<tool>(args)` -------------------------
  // The gateway sends each call to the client that sent the code and resolves it with the
  // client's answer; an `{error}` answer rejects with the client's message as it is.
  async function callClient(namespace, tool, args) {
    let json;
    try {
      json = args === undefined ? "null" : JSONStringify(args);
    } catch (e) {
      throw new TypeErrorCtor(`${namespace}.${tool}(): the arguments cannot be sent as JSON (${e && e.message})`);
    }
    if (json === undefined) json = "null";
    const out = await hostApi(namespace, tool, json, true);
    const error = out.error;
    if (error !== undefined) {
      throw new ApiError(error.message, { __proto__: null, code: error.code, api: namespace, tool });
    }
    return JSONParse(out.value);
  }

  // Calls `factory` with one object per namespace (`spec`: JSON of [{namespace, tools:
  // [[name, jsName], …]}]): the snippet. Each object has the declared tools under their JS
  // names (and their own names, when those differ); the snippet may add properties to it.
  function clientTools(factory, spec) {
    const namespaces = JSONParse(spec);
    const bindings = [];
    for (let i = 0; i < namespaces.length; i++) {
      const namespace = namespaces[i].namespace;
      const tools = namespaces[i].tools;
      const binding = ObjectCreate(null);
      for (let j = 0; j < tools.length; j++) {
        const name = tools[j][0];
        const fn = (args) => callClient(namespace, name, args);
        ObjectDefineProperty(binding, tools[j][1], { __proto__: null, value: fn, writable: true, enumerable: true, configurable: true });
        if (tools[j][1] !== name && !ObjectHasOwn(binding, name)) {
          ObjectDefineProperty(binding, name, { __proto__: null, value: fn, writable: true, configurable: true });
        }
      }
      ObjectDefineProperty(bindings, i, { __proto__: null, value: binding, writable: true, enumerable: true, configurable: true });
    }
    return ReflectApply(factory, undefined, bindings);
  }

  // The env of the last call, by the Worker's own env and the tenant's API names: a cached
  // Worker keeps one env object while its tenant's APIs stay the same.
  let apisBase = null;
  let apisKey = "";
  let apisEnv = null;
  function withApis(env, apis) {
    if (apis.length === 0) return env;
    const key = ReflectApply(ArrayJoin, apis, ["\n"]);
    if (env === apisBase && key === apisKey) return apisEnv;
    const out = { __proto__: ObjectGetPrototypeOf(env) };
    const keys = ReflectOwnKeys(env);
    for (let i = 0; i < keys.length; i++) {
      const d = ObjectGetOwnPropertyDescriptor(env, keys[i]);
      ObjectSetPrototypeOf(d, null);
      ObjectDefineProperty(out, keys[i], d);
    }
    for (let i = 0; i < apis.length; i++) {
      ObjectDefineProperty(out, apis[i], { __proto__: null, value: apiBinding(apis[i]), enumerable: true });
    }
    ObjectFreeze(out);
    apisBase = env;
    apisKey = key;
    apisEnv = out;
    return out;
  }

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
      if (isUnusable(stream)) throw new TypeErrorCtor(`${what}: the body has already been used`);
      const reader = ReflectApply(streams.getReader, stream, []);
      let total = 0;
      return {
        __proto__: null,
        status,
        headers: outHeaders,
        body: null,
        next: async () => {
          const step = await ReflectApply(streams.read, reader, []);
          if (step.done) return undefined;
          const bytes = chunkBytes(step.value, what);
          total += bytes.length;
          if (total > maxBodyBytes) {
            const err = overLimit(what, maxBodyBytes);
            ReflectApply(streams.cancelReader, reader, [err]);
            throw err;
          }
          return bytes;
        },
        cancel: async () => {
          await ReflectApply(streams.cancelReader, reader, [new TypeErrorCtor("the client went away")]);
        },
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


  return {
    __proto__: null,
    dispatch: (...args) => protect(ReflectApply(dispatch, undefined, args)),
    execute: (fn, env) => protect(execute(fn, env)),
    withApis,
    clientTools,
    workerHandler,
    parseEnv,
    protect,
  };
}
