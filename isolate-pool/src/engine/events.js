// The DOM standard's event semantics over LLRT's EventTarget/Event classes (see "events" in
// bootstrap.js). Compiled to bytecode by build.rs and loaded the first time a Worker touches
// Event, EventTarget, CustomEvent, AbortController or AbortSignal (`part("events")`): loading it
// patches the native prototypes once.
//
// LLRT's EventTarget keeps plain function lists and its Event has no dispatch state. Over them,
// per the DOM standard: listeners may be objects with handleEvent, null is ignored, a listener is
// registered once per (type, callback, capture), `once`, `signal` and `capture` options,
// preventDefault/defaultPrevented (and dispatchEvent's result), stopPropagation,
// stopImmediatePropagation, target/currentTarget/eventPhase, and a listener's exception is
// reported (console.error) instead of stopping the dispatch. Each registration is a wrapper
// function in LLRT's list; the wrapper checks the event's state before calling the listener.
//
// `make` receives the intrinsics and native classes the bootstrap captured before any user code
// ran (this module is evaluated later, when globals and prototypes may have been replaced).

export default function make(h) {
  const {
    natives,
    ReflectApply,
    ObjectDefineProperty,
    ObjectGetOwnPropertyDescriptor,
    ObjectGetPrototypeOf,
    ObjectFreeze,
    StringCtor,
    TypeErrorCtor,
    DOMExceptionCtor,
    MapCtor,
    MapGet,
    WeakMapCtor,
    WeakMapGet,
    WeakMapSet,
    consoleError,
    defineMethod,
    push,
    mapHas,
    mapSet,
    mapDelete,
  } = h;
  const EventCtor = natives.events.Event;
  const EventProto = EventCtor.prototype;
  const eventType = ObjectGetOwnPropertyDescriptor(EventProto, "type").get;
  const eventCancelable = ObjectGetOwnPropertyDescriptor(EventProto, "cancelable").get;
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
  if (typeof natives.events.CustomEvent === "function") {
    let p = natives.events.CustomEvent.prototype;
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
  const PHASES = ["NONE", "CAPTURING_PHASE", "AT_TARGET", "BUBBLING_PHASE"];
  for (let value = 0; value < PHASES.length; value++) {
    ObjectDefineProperty(EventCtor, PHASES[value], { __proto__: null, value, enumerable: true });
    ObjectDefineProperty(EventProto, PHASES[value], { __proto__: null, value, enumerable: true });
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
          ReflectApply(consoleError, undefined, ["Uncaught (in event listener)", e]);
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
        throw new DOMExceptionCtor("dispatchEvent: the event is already being dispatched", "InvalidStateError");
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
    push(wrapped, [proto, nativeAdd]);
  }
  // A signal's own (native) addEventListener, for `{ signal }` removal without our wrapper.
  const wrapped = [];
  function nativeSignalAdd(signal) {
    for (let i = 0; i < wrapped.length; i++) {
      let p = ObjectGetPrototypeOf(signal);
      while (p !== null) {
        if (p === wrapped[i][0]) return wrapped[i][1];
        p = ObjectGetPrototypeOf(p);
      }
    }
    return signal.addEventListener;
  }
  const TargetProto = natives.events.EventTarget.prototype;
  wrapTarget(TargetProto);
  const SignalProto = natives.events.AbortSignal.prototype;
  if (SignalProto.addEventListener !== TargetProto.addEventListener) wrapTarget(SignalProto);
  // What fetch() uses to follow a request's signal.
  return ObjectFreeze({
    __proto__: null,
    signalAdd: SignalProto.addEventListener,
    signalRemove: SignalProto.removeEventListener,
  });
}
