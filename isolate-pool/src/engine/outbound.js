// fetch(): a Worker's outbound requests, through the gateway's egress pipeline; and the calls of
// its tenant's APIs (`env.<api>.<tool>()`) and of an execute's client tools, with `ApiError`.
// Compiled to bytecode by build.rs and loaded the first time a Worker touches `fetch` or
// `ApiError`, has tenant APIs in its env, or runs an execute with client tools (`part("outbound")`
// in bootstrap.js), so an isolate whose Worker does none of these pays nothing for it.
//
// `make` receives the intrinsics, host calls and the bootstrap's body plumbing, all captured
// before any user code ran (this module is evaluated later, when globals may have been replaced).

export default function make(h) {
  const {
    host,
    checked,
    loadStreams,
    part,
    ReflectApply,
    ReflectConstruct,
    ObjectDefineProperty,
    ObjectFreeze,
    StringCtor,
    SetHas,
    NativeResponse,
    NULL_BODY_STATUS,
    HeadersForEach,
    RequestHeaders,
    RequestMethod,
    RequestUrl,
    RequestArrayBuffer,
    RequestBodyUsed,
    RequestSignal,
    SignalAborted,
    SignalReason,
    maxBodyBytes,
    push,
    streamBody,
    setStreamBody,
    isNullBody,
    markNullBody,
    bodyBytes,
    isRequestObject,
    ObjectCreate,
    ObjectSetPrototypeOf,
    ObjectHasOwn,
    ArrayIsArray,
    JSONStringify,
    JSONParse,
    ErrorCtor,
    TypeErrorCtor,
    MapCtor,
    MapGet,
    MapSet,
    ProxyCtor,
    describe,
  } = h;
  const hostFetch = host.fetch;
  const abortFetch = host.abortFetch;
  const readFetchBody = host.readFetchBody;
  const cancelFetchBody = host.cancelFetchBody;
  let nextFetchId = 1;
  /**
   * A streamed fetch() response body: the bytes that came with the head, then the rest as the
   * upstream sends it (`readFetchBody`, paced by the reads); cancelling it drops the upstream.
   */
  function fetchBodyStream(first, id) {
    const streams = loadStreams();
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
      const { signalAdd, signalRemove } = part("events");
      ReflectApply(signalAdd, signal, ["abort", onAbort]);
      try {
        res = await hostFetch(method, url, headers, body, StringCtor(redirect || "follow"), id);
      } catch (e) {
        if (aborted) throw ReflectApply(SignalReason, signal, []);
        throw e;
      } finally {
        ReflectApply(signalRemove, signal, ["abort", onAbort]);
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

  // ---- tenant APIs: `await env.<api>.<tool>(args)` -------------------------------------------
  // Each API is a binding object whose every property is a tool function; the gateway decides
  // per call whether the API and tool exist and checks the arguments. `then` is never a tool, so
  // that `await env.<api>` does not call one.
  const hostApi = host.api;
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

  return ObjectFreeze({ __proto__: null, fetch, ApiError, apiBinding, clientTools });
}
