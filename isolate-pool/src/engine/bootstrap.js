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
