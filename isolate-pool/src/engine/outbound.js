// fetch(): a Worker's outbound requests, through the gateway's egress pipeline. Compiled to
// bytecode by build.rs and loaded the first time a Worker touches `fetch` (`part("outbound")` in
// bootstrap.js), so an isolate whose Worker never does pays nothing for it.
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
    eventNatives,
    maxBodyBytes,
    push,
    streamBody,
    setStreamBody,
    isNullBody,
    markNullBody,
    bodyBytes,
    isRequestObject,
  } = h;
  const NO_SIGNAL = ObjectFreeze({ __proto__: null });
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
    // AbortSignal's getters (the event classes are made by now if `signal` is one).
    const { SignalAborted, SignalReason } = signal ? eventNatives() : NO_SIGNAL;
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

  return ObjectFreeze({ __proto__: null, fetch });
}
