//! Compiled modules, kept as QuickJS bytecode so that loading the same source again (a
//! `load()`, or a `get()` miss, of code this process compiled before) skips the parser.
//!
//! Keyed by tenant, module name and SHA-256 of the source: one tenant never gets bytecode
//! compiled from another's code, and cannot time another tenant's loads through the cache.
//! Sources under [`MIN_SOURCE_BYTES`] are not cached (parsing them costs less than the copy).
//! Bounded to [`MAX_TOTAL_BYTES`] per process (least recently used out); the bytes are not
//! charged to any isolate (they outlive it). QuickJS copies what it reads (this version has no
//! in-place read: `JS_READ_OBJ_ROM_DATA` is 0), so a loaded module does not hold the bytes.
#![allow(unsafe_code)] // loading QuickJS bytecode (an engine API); each block has a `// SAFETY:` line

use rquickjs::module::{Declared, WriteOptions};
use rquickjs::{Ctx, Module, Result};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex, OnceLock};

/// Smaller sources are compiled every time.
pub(super) const MIN_SOURCE_BYTES: usize = 4 << 10;
/// All cached bytecode of this process.
const MAX_TOTAL_BYTES: usize = 64 << 20;
/// One entry at most (a larger module is compiled every time).
const MAX_ENTRY_BYTES: usize = 16 << 20;

type Key = (String, String, [u8; 32]);

struct Cache {
    entries: lru::LruCache<Key, Arc<[u8]>>,
    bytes: usize,
}

fn cache() -> &'static Mutex<Cache> {
    static CACHE: OnceLock<Mutex<Cache>> = OnceLock::new();
    CACHE.get_or_init(|| {
        Mutex::new(Cache {
            entries: lru::LruCache::unbounded(),
            bytes: 0,
        })
    })
}

fn get(key: &Key) -> Option<Arc<[u8]>> {
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.entries.get(key).cloned()
}

fn put(key: Key, bytes: Vec<u8>) {
    if bytes.len() > MAX_ENTRY_BYTES {
        return;
    }
    // A copy the cache owns, outside the isolate's memory account.
    let bytes: Arc<[u8]> = super::memory::untracked(|| Arc::from(bytes.as_slice()));
    let mut c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.bytes += bytes.len();
    if let Some(old) = c.entries.put(key, bytes) {
        c.bytes -= old.len();
    }
    while c.bytes > MAX_TOTAL_BYTES {
        match c.entries.pop_lru() {
            Some((_, old)) => c.bytes -= old.len(),
            None => break,
        }
    }
}

/// Compiles module `name` from `source` for `tenant`, or loads its cached bytecode.
pub(super) fn declare<'js>(
    ctx: &Ctx<'js>,
    tenant: &str,
    name: &str,
    source: String,
) -> Result<Module<'js, Declared>> {
    if source.len() < MIN_SOURCE_BYTES {
        return Module::declare(ctx.clone(), name, source);
    }
    let key: Key = (
        tenant.to_string(),
        name.to_string(),
        Sha256::digest(source.as_bytes()).into(),
    );
    if let Some(bytes) = get(&key) {
        // SAFETY: these bytes were written by `Module::write` in this process, by this build of
        // QuickJS, from this tenant's module of this name and source (the key). QuickJS copies
        // what it reads (JS_READ_OBJ_ROM_DATA, which rquickjs passes, is 0 in this version), so
        // the module does not refer to `bytes` after the call.
        let module = unsafe { Module::load(ctx.clone(), &bytes) }?;
        #[cfg(test)]
        LOADED.lock().unwrap_or_else(|p| p.into_inner()).push(key.2);
        return Ok(module);
    }
    let module = Module::declare(ctx.clone(), name, source)?;
    if let Ok(bytes) = module.write(WriteOptions::default()) {
        put(key, bytes);
    }
    Ok(module)
}

/// Digests of the sources whose bytecode was loaded from the cache (tests).
#[cfg(test)]
pub(super) static LOADED: Mutex<Vec<[u8; 32]>> = Mutex::new(Vec::new());

/// Whether `tenant`'s module `name` with `source` is cached (tests).
#[cfg(test)]
pub(super) fn is_cached(tenant: &str, name: &str, source: &str) -> bool {
    let key: Key = (
        tenant.to_string(),
        name.to_string(),
        Sha256::digest(source.as_bytes()).into(),
    );
    let c = cache().lock().unwrap_or_else(|p| p.into_inner());
    c.entries.contains(&key)
}
