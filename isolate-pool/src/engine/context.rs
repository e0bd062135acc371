//! The runtime's async context: isogate's patch on QuickJS (`vendor/rquickjs-sys`,
//! `async-context.patch`) carries a number chosen by the embedder from where a promise reaction
//! (`then`, `await`) was registered, or a job enqueued, to where it runs, like the TC39
//! AsyncContext proposal and V8's continuation-preserved embedder data. isogate's number is the
//! invocation's run id ([`super::budget::RunId`]), so interleaved invocations in one isolate
//! keep their own CPU time, logs and subrequests.
#![allow(unsafe_code)] // the engine's async context FFI; each block has a `// SAFETY:` line

use super::HostState;
use rquickjs::{qjs, Ctx};
use std::cell::Cell;
use std::ffi::c_void;
use std::rc::Rc;

extern "C" {
    fn JS_SetAsyncContext(rt: *mut qjs::JSRuntime, async_context: u64);
    fn JS_SetAsyncContextHook(
        rt: *mut qjs::JSRuntime,
        hook: Option<unsafe extern "C" fn(u64, u64, *mut c_void)>,
        opaque: *mut c_void,
    );
}

/// The isolate's runtime, for setting its async context (null until bound).
pub(super) struct Contexts {
    rt: Cell<*mut qjs::JSRuntime>,
    current: Cell<u64>,
}

impl Contexts {
    pub(super) fn new() -> Contexts {
        Contexts {
            rt: Cell::new(std::ptr::null_mut()),
            current: Cell::new(0),
        }
    }

    /// Binds `state` to the runtime of `ctx`: every change of the runtime's context is reported
    /// to `state.budget`. Call once, before any invocation.
    pub(super) fn bind(state: &Rc<HostState>, ctx: &Ctx<'_>) {
        // SAFETY: `ctx` is a live context; JS_GetRuntime only reads its runtime pointer.
        let rt = unsafe { qjs::JS_GetRuntime(ctx.as_raw().as_ptr()) };
        // SAFETY: `rt` is the live runtime of `ctx`. The opaque pointer is the `HostState` that
        // the isolate holds (and the runtime's host functions hold clones of) until after the
        // runtime is freed, so it outlives every call of the hook.
        unsafe { JS_SetAsyncContextHook(rt, Some(switched), Rc::as_ptr(state) as *mut c_void) };
        state.contexts.rt.set(rt);
    }

    /// Makes `run` the runtime's current context (the code the next poll runs is its).
    pub(super) fn enter(&self, run: u64) {
        let rt = self.rt.get();
        if rt.is_null() || self.current.get() == run {
            return;
        }
        self.current.set(run);
        // SAFETY: `rt` was bound from a live context of this isolate, which frees its runtime
        // only when the isolate (which owns this value through its `HostState`) is dropped;
        // the call happens on the isolate's thread, outside any JS (the hook it triggers does
        // not call into the runtime).
        unsafe { JS_SetAsyncContext(rt, run) };
    }

    /// The context set by [`Contexts::enter`] (jobs switch and restore around themselves).
    pub(super) fn entered(&self) -> u64 {
        self.current.get()
    }
}

/// The hook: the runtime's context changed (a job of another context runs, or ended).
unsafe extern "C" fn switched(_from: u64, to: u64, opaque: *mut c_void) {
    // SAFETY: `opaque` is the `HostState` bound in `Contexts::bind`, alive while its runtime is
    // (see there); the hook runs on the isolate's thread.
    let state = unsafe { &*(opaque as *const HostState) };
    state.budget.switch_to(to);
}
