// How the JS layer (bootstrap, parts, vendored polyfills) is compiled to bytecode. Shared by
// build.rs (`include!`), which writes the bytecode the crate embeds, and the engine's tests,
// which check what the flags leave out. Uses only rquickjs, a dependency of both.

/// How the bytecode is written: without the source text, and with the variable names and tables
/// left out (`JS_WRITE_OBJ_STRIP_LOCALS`, isogate's patch to QuickJS-ng, see
/// vendor/rquickjs-sys/SOURCE.md; rquickjs's `WriteOptions` cannot ask for it). A compiled
/// function reaches its variables by index, so the names are dead weight, but every one is an
/// atom in every isolate that loads the bytecode (~300 of the bootstrap's), and every variable an
/// entry of its function's table (~10 KB of every isolate). Function names, which a Worker can
/// read (`.name`, stack traces), and property names stay.
pub(crate) const JS_LAYER_WRITE_FLAGS: i32 = (rquickjs::qjs::JS_WRITE_OBJ_BYTECODE
    | rquickjs::qjs::JS_WRITE_OBJ_STRIP_SOURCE) as i32
    | JS_WRITE_OBJ_STRIP_LOCALS;
/// quickjs.h's value (the crate's prebuilt bindings predate the patch).
pub(crate) const JS_WRITE_OBJ_STRIP_LOCALS: i32 = 1 << 6;

/// Compiles `source` as module `name` and writes its bytecode with `flags`. Panics on a source
/// that does not compile (the JS layer is ours; a test compiles its own snippets).
pub(crate) fn write_js_layer_bytecode(name: &str, source: &str, flags: i32) -> Vec<u8> {
    use rquickjs::qjs;
    let rt = rquickjs::Runtime::new().expect("quickjs runtime");
    let ctx = rquickjs::Context::full(&rt).expect("quickjs context");
    ctx.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        let len = source.len();
        let source = std::ffi::CString::new(source).expect("no NUL in a JS source");
        let file = std::ffi::CString::new(name).expect("no NUL in a module name");
        let eval_flags = (qjs::JS_EVAL_TYPE_MODULE | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
        // SAFETY: `raw` is the live context of `ctx`; both strings are NUL-terminated and
        // outlive the call; `len` excludes the terminator, as JS_Eval requires.
        let module =
            unsafe { qjs::JS_Eval(raw, source.as_ptr(), len as _, file.as_ptr(), eval_flags) };
        // SAFETY: a value JS_Eval returned.
        if unsafe { qjs::JS_IsException(module) } {
            let exc = ctx.catch();
            panic!("{name} does not compile: {exc:?}");
        }
        let mut size = 0;
        // SAFETY: `module` is the compiled (not yet evaluated) module JS_Eval returned in this
        // context; JS_WriteObject only reads it. A module value is owned by its context and is
        // not freed here (QuickJS never frees a module through its value).
        let buf = unsafe { qjs::JS_WriteObject(raw, &mut size, module, flags) };
        assert!(!buf.is_null(), "{name}: writing the bytecode failed");
        // SAFETY: JS_WriteObject returned `size` bytes at `buf`, which are copied out and then
        // freed with the context's allocator, as its contract says.
        unsafe {
            let bytes = std::slice::from_raw_parts(buf, size as usize).to_vec();
            qjs::js_free(raw, buf.cast());
            bytes
        }
    })
}
