//! Module resolution confined to the Worker's own modules: no file system, no network, no
//! host-internal modules. Relative specifiers resolve against the importing module's name.

use super::bytecode;
use crate::api::ModuleSource;
use rquickjs::{
    loader::{Loader, Resolver},
    module::Declared,
    Ctx, Error, Module, Result,
};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

/// The modules of the Worker currently loaded in an isolate, and whose they are.
#[derive(Clone, Default)]
pub(super) struct ModuleMap(Rc<RefCell<Modules>>);

#[derive(Default)]
pub(super) struct Modules {
    sources: BTreeMap<String, ModuleSource>,
    tenant: String,
}

impl ModuleMap {
    pub(super) fn set(&self, modules: BTreeMap<String, ModuleSource>, tenant: &str) {
        let mut m = self.0.borrow_mut();
        m.sources = modules;
        m.tenant = tenant.to_string();
    }

    /// Declares module `name` from `source` (through the bytecode cache).
    pub(super) fn declare<'js>(
        &self,
        ctx: &Ctx<'js>,
        name: &str,
        source: String,
    ) -> Result<Module<'js, Declared>> {
        let tenant = self.0.borrow().tenant.clone();
        bytecode::declare(ctx, &tenant, name, source)
    }
}

const NOT_FOUND: &str = "only the Worker's own modules can be imported";

/// Joins a relative specifier onto the importing module's directory, normalising `.` and `..`.
fn resolve_name(base: &str, name: &str) -> String {
    if !(name.starts_with("./") || name.starts_with("../")) {
        return name.trim_start_matches('/').to_string();
    }
    let mut parts: Vec<&str> = base.split('/').collect();
    parts.pop();
    for segment in name.split('/') {
        match segment {
            "." | "" => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    parts.join("/")
}

pub(super) struct WorkerResolver(ModuleMap);

impl WorkerResolver {
    pub(super) fn new(map: ModuleMap) -> Self {
        WorkerResolver(map)
    }
}

impl Resolver for WorkerResolver {
    fn resolve<'js>(&mut self, _ctx: &Ctx<'js>, base: &str, name: &str) -> Result<String> {
        let resolved = resolve_name(base, name);
        if self.0 .0.borrow().sources.contains_key(&resolved) {
            Ok(resolved)
        } else {
            Err(Error::new_resolving_message(base, name, NOT_FOUND))
        }
    }
}

pub(super) struct WorkerLoader(ModuleMap);

impl WorkerLoader {
    pub(super) fn new(map: ModuleMap) -> Self {
        WorkerLoader(map)
    }
}

impl Loader for WorkerLoader {
    fn load<'js>(&mut self, ctx: &Ctx<'js>, name: &str) -> Result<Module<'js, Declared>> {
        let source = match self.0 .0.borrow().sources.get(name) {
            Some(ModuleSource::Js(src)) => src.clone(),
            Some(ModuleSource::Json { json }) => format!("export default {json};"),
            Some(ModuleSource::Text { text }) => format!(
                "export default {};",
                serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
            ),
            None => return Err(Error::new_loading_message(name, NOT_FOUND)),
        };
        self.0.declare(ctx, name, source)
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_name;

    #[test]
    fn relative_names_resolve_against_the_importer() {
        assert_eq!(resolve_name("w.js", "./util.js"), "util.js");
        assert_eq!(resolve_name("lib/a.js", "./b.js"), "lib/b.js");
        assert_eq!(resolve_name("lib/a.js", "../c.js"), "c.js");
        assert_eq!(resolve_name("lib/x/a.js", "../../c.js"), "c.js");
        assert_eq!(resolve_name("a.js", "../../../etc/passwd"), "etc/passwd");
        assert_eq!(resolve_name("a.js", "data.json"), "data.json");
        assert_eq!(resolve_name("a.js", "/abs.js"), "abs.js");
    }
}
