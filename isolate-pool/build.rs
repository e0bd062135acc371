//! Compiles the Worker-facing JS layer (`src/engine/bootstrap.js`), and the parts an isolate
//! loads on first use — the vendored Web Streams implementation
//! (`vendor/web-streams-polyfill/ponyfill.js`), `URLPattern` (`vendor/urlpattern-polyfill/`),
//! `Intl` (`src/engine/intl.js`) and the glue only some Workers need (`PARTS`) — to QuickJS
//! bytecode at build time, so an isolate loads them with `Module::load` instead of parsing source.
//! The bytecode is produced by the same `rquickjs-sys` (QuickJS) version the crate links, which is
//! what makes it valid to load at run time.

#![allow(unsafe_code)] // writing bytecode with a flag rquickjs does not expose (an engine API); each block has a `// SAFETY:` line

use rquickjs::{qjs, Context, Runtime};
use std::{env, ffi::CString, fs, path::PathBuf};

const BOOTSTRAP: &str = "src/engine/bootstrap.js";
const STREAMS: &str = "vendor/web-streams-polyfill/ponyfill.js";
const INTL: &str = "src/engine/intl.js";
/// The glue an isolate loads on first use (`part(name)` in bootstrap.js): name and source.
const PARTS: &[(&str, &str)] = &[
    ("lazy", "src/engine/lazy.js"),
    ("guards", "src/engine/guards.js"),
    ("events", "src/engine/events.js"),
    ("outbound", "src/engine/outbound.js"),
    ("forms", "src/engine/forms.js"),
    ("bodies", "src/engine/bodies.js"),
];
const URLPATTERN: &str = "vendor/urlpattern-polyfill/urlpattern.js";

/// How the bytecode is written: without the source text, and with the names of local and closure
/// variables left out (`JS_WRITE_OBJ_STRIP_LOCALS`, isogate's patch to QuickJS-ng, see
/// vendor/rquickjs-sys/SOURCE.md; rquickjs's `WriteOptions` cannot ask for it). A compiled
/// function reaches its variables by index, so the names are dead weight, but every one is an
/// atom in every isolate that loads the bytecode (~300 of the bootstrap's). Function names, which
/// a Worker can read (`.name`, stack traces), and property names stay.
const WRITE_FLAGS: i32 = (qjs::JS_WRITE_OBJ_BYTECODE | qjs::JS_WRITE_OBJ_STRIP_SOURCE) as i32
    | JS_WRITE_OBJ_STRIP_LOCALS;
/// quickjs.h's value (the crate's prebuilt bindings predate the patch).
const JS_WRITE_OBJ_STRIP_LOCALS: i32 = 1 << 6;

fn compile(name: &str, source: String, out: &str) {
    let rt = Runtime::new().expect("quickjs runtime");
    let ctx = Context::full(&rt).expect("quickjs context");
    let bytes = ctx.with(|ctx| {
        let raw = ctx.as_raw().as_ptr();
        let len = source.len();
        let source = CString::new(source).expect("no NUL in a JS source");
        let file = CString::new(name).expect("no NUL in a module name");
        let flags = (qjs::JS_EVAL_TYPE_MODULE | qjs::JS_EVAL_FLAG_COMPILE_ONLY) as i32;
        // SAFETY: `raw` is the live context of `ctx`; both strings are NUL-terminated and
        // outlive the call; `len` excludes the terminator, as JS_Eval requires.
        let module = unsafe { qjs::JS_Eval(raw, source.as_ptr(), len as _, file.as_ptr(), flags) };
        // SAFETY: a value JS_Eval returned.
        if unsafe { qjs::JS_IsException(module) } {
            let exc = ctx.catch();
            panic!("{name} does not compile: {exc:?}");
        }
        let mut size = 0;
        // SAFETY: `module` is the compiled (not yet evaluated) module JS_Eval returned in this
        // context; JS_WriteObject only reads it. A module value is owned by its context and is
        // not freed here (QuickJS never frees a module through its value).
        let buf = unsafe { qjs::JS_WriteObject(raw, &mut size, module, WRITE_FLAGS) };
        assert!(!buf.is_null(), "{name}: writing the bytecode failed");
        // SAFETY: JS_WriteObject returned `size` bytes at `buf`, which are copied out and then
        // freed with the context's allocator, as its contract says.
        unsafe {
            let bytes = std::slice::from_raw_parts(buf, size as usize).to_vec();
            qjs::js_free(raw, buf.cast());
            bytes
        }
    });
    let path = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join(out);
    fs::write(path, bytes).expect("write bytecode");
}

fn main() {
    println!("cargo:rerun-if-changed={BOOTSTRAP}");
    println!("cargo:rerun-if-changed={STREAMS}");
    println!("cargo:rerun-if-changed={INTL}");
    for (_, path) in PARTS {
        println!("cargo:rerun-if-changed={path}");
    }
    println!("cargo:rerun-if-changed={URLPATTERN}");
    let bootstrap = fs::read_to_string(BOOTSTRAP).expect("read bootstrap.js");
    compile("isogate:bootstrap", bootstrap, "bootstrap.qjsbc");
    // The UMD bundle sees `exports` and `module` and fills `exports` (it touches no global).
    let polyfill = fs::read_to_string(STREAMS).expect("read the web-streams-polyfill");
    let streams = format!(
        "const exports = {{}};\nconst module = {{ exports }};\n{polyfill}\nexport default exports;\n"
    );
    compile("isogate:streams", streams, "streams.qjsbc");
    let intl = fs::read_to_string(INTL).expect("read intl.js");
    compile("isogate:intl", intl, "intl.qjsbc");
    for (name, path) in PARTS {
        let source = fs::read_to_string(path).expect("read a part of the glue");
        compile(&format!("isogate:{name}"), source, &format!("{name}.qjsbc"));
    }
    let urlpattern = fs::read_to_string(URLPATTERN).expect("read the urlpattern-polyfill");
    compile("isogate:urlpattern", urlpattern, "urlpattern.qjsbc");
}
