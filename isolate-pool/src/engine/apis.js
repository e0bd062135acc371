// Tenant APIs (`await env.<api>.<tool>(args)`), the client-side tools of an execute
// (`<namespace>.<tool>(args)`) and their `ApiError`. Compiled to bytecode by build.rs and loaded
// the first time an invocation has a tenant API or a client tool, or a Worker reads `ApiError`
// (`part("apis")` in bootstrap.js), so an isolate that has neither pays nothing for it.
//
// `make` receives the intrinsics and host calls the bootstrap captured before any user code ran
// (this module is evaluated later, when globals may have been replaced).
//
// Each API is a binding object whose every property is a tool function; the gateway decides per
// call whether the API and tool exist and checks the arguments. `then` is never a tool, so that
// `await env.<api>` does not call one.

export default function make(h) {
  const {
    host,
    describe,
    ReflectApply,
    ReflectConstruct,
    ReflectOwnKeys,
    ObjectDefineProperty,
    ObjectGetOwnPropertyDescriptor,
    ObjectFreeze,
    ObjectCreate,
    ObjectGetPrototypeOf,
    ObjectSetPrototypeOf,
    ObjectHasOwn,
    ArrayIsArray,
    ArrayJoin,
    JSONStringify,
    JSONParse,
    TypeErrorCtor,
    ErrorCtor,
    MapCtor,
    MapGet,
    MapSet,
    ProxyCtor,
  } = h;
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

  return ObjectFreeze({ __proto__: null, ApiError, withApis, clientTools });
}
