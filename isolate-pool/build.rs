//! Compiles the Worker-facing JS layer (`src/engine/bootstrap.js`), and the parts an isolate
//! loads on first use — the vendored Web Streams implementation
//! (`vendor/web-streams-polyfill/ponyfill.js`), `URLPattern` (`vendor/urlpattern-polyfill/`),
//! `Intl` (`src/engine/intl.js`) and the glue only some Workers need (`PARTS`) — to QuickJS
//! bytecode at build time, so an isolate loads them with `Module::load` instead of parsing source.
//! The bytecode is produced by the same `rquickjs-sys` (QuickJS) version the crate links, which is
//! what makes it valid to load at run time.

#![allow(unsafe_code)] // writing bytecode with a flag rquickjs does not expose (an engine API); each block has a `// SAFETY:` line

use std::{env, fs, path::PathBuf};

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
    ("apis", "src/engine/apis.js"),
];
const URLPATTERN: &str = "vendor/urlpattern-polyfill/urlpattern.js";

include!("src/engine/jslayer.rs");

fn compile(name: &str, source: String, out: &str) {
    let bytes = write_js_layer_bytecode(name, &source, JS_LAYER_WRITE_FLAGS);
    let path = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join(out);
    fs::write(path, bytes).expect("write bytecode");
}

fn main() {
    println!("cargo:rerun-if-changed=src/engine/jslayer.rs");
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
