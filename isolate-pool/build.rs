//! Compiles the Worker-facing JS layer (`src/engine/bootstrap.js`) to QuickJS bytecode at build
//! time, so an isolate loads it with `Module::load` instead of parsing source on every start.
//! The bytecode is produced by the same `rquickjs-sys` (QuickJS) version the crate links, which is
//! what makes it valid to load at run time.

use rquickjs::{module::WriteOptions, Context, Module, Runtime};
use std::{env, fs, path::PathBuf};

const BOOTSTRAP: &str = "src/engine/bootstrap.js";

fn main() {
    println!("cargo:rerun-if-changed={BOOTSTRAP}");
    let source = fs::read_to_string(BOOTSTRAP).expect("read bootstrap.js");
    let rt = Runtime::new().expect("quickjs runtime");
    let ctx = Context::full(&rt).expect("quickjs context");
    let bytes = ctx.with(|ctx| {
        let module = match Module::declare(ctx.clone(), "isogate:bootstrap", source) {
            Ok(m) => m,
            Err(rquickjs::Error::Exception) => {
                let exc = ctx.catch();
                panic!("bootstrap.js does not compile: {exc:?}");
            }
            Err(e) => panic!("bootstrap.js does not compile: {e}"),
        };
        module
            .write(WriteOptions {
                strip_source: true,
                ..Default::default()
            })
            .expect("write bytecode")
    });
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("bootstrap.qjsbc");
    fs::write(out, bytes).expect("write bootstrap bytecode");
}
