//! Native-memory accounting per isolate: one *account* holds every byte an isolate keeps alive,
//! QuickJS's heap and the Rust allocations LLRT makes for Buffer/Blob/File/TextEncoder/...
//!
//! - [`TrackingAllocator`] is the process's global allocator (wrapping [`System`]). While the
//!   engine polls an isolate's futures or runs its JS synchronously it *enters* the isolate's
//!   account on that thread ([`enter`]); every Rust allocation made meanwhile is charged to it.
//!   Each allocation (tracked or not) carries an 8-byte tag just before the pointer it hands out
//!   (account slot + generation), so a free credits the account that was charged, even when the
//!   free happens later on another thread (response bodies cross threads), and never an account
//!   whose slot was released and reused since (the generation differs). Allocations made under an
//!   account are zeroed (and a realloc under an account zeroes its new tail), so no buffer handed
//!   to JS can carry bytes of another tenant. An allocation that would not fit in the account's
//!   remaining budget (e.g. `Vec::with_capacity` sized by a sparse array's `length`) is served by
//!   a lazily backed `mmap` (no commit) instead of aborting the process when `malloc` refuses it;
//!   the account is breached, so the invocation fails with `memory_limit`.
//! - [`QuickJsAllocator`] is QuickJS's allocator (rquickjs allocator hook): charged to the same
//!   account and refusing (QuickJS throws out-of-memory) beyond the account's limit. QuickJS
//!   zeroes the memory it exposes to JS itself (ArrayBuffers come from `js_mallocz`). Its blocks
//!   come from mimalloc, not glibc's malloc: QuickJS's heap is thousands of small objects
//!   (about 3,900 blocks in a fresh isolate), for which mimalloc's size classes need no per-block
//!   header and its thread-local free lists no locking. Measured (BENCHMARKS.md, "mimalloc for
//!   QuickJS's heap"): isolate start and drop 20–40 % faster, a warm request 15–25 % faster, 5 %
//!   less memory per cached Worker, the same memory at idle.
//!
//! An account whose bytes pass its limit is marked *breached*; the budget turns that into
//! `memory_limit` at the next interrupt check and when the invocation ends. Sizes that JS hands to
//! a native allocation are additionally checked before allocating, at the JS boundary
//! (bootstrap.js, "native memory guards", through the `reserve` host call).
#![allow(unsafe_code)] // the global allocator and QuickJS's allocator hook; each block has a `// SAFETY:` line

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};

/// Number of account slots (slot 0 means "no account"): at most this many isolates at once.
const SLOTS: usize = 1 << 16;
/// A slot's state packs the generation (high 24 bits) and the charged bytes (low 40 bits) in one
/// word, so "credit if the generation still matches" is a single compare-and-swap.
const BYTES_BITS: u32 = 40;
const BYTES_MASK: u64 = (1 << BYTES_BITS) - 1;
const GEN_MASK: u64 = (1 << 24) - 1;
/// Tag bit: the allocation is an anonymous mapping, not a `System` allocation.
const MAPPED: u64 = 1 << 63;
/// Size of the tag in front of every allocation.
const TAG_BYTES: usize = 8;
/// Over-budget allocations at least this large are mapped lazily instead of `malloc`ed.
const MAP_MIN_BYTES: usize = 1 << 20;

struct Slot {
    state: AtomicU64,
    limit: AtomicU64,
    breached: AtomicBool,
    in_use: AtomicBool,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU64::new(0),
            limit: AtomicU64::new(0),
            breached: AtomicBool::new(false),
            in_use: AtomicBool::new(false),
        }
    }
}

static SLOT_TABLE: [Slot; SLOTS] = [const { Slot::new() }; SLOTS];
static CURSOR: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// The account charged for allocations on this thread (0: none). Const-initialised and
    /// without a destructor, so the allocator can read it at any time without lazy TLS setup.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

#[inline]
fn current() -> u64 {
    CURRENT.try_with(Cell::get).unwrap_or(0)
}

/// One account: slot index (low 32 bits) and the slot's generation when it was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct AccountId(u64);

impl AccountId {
    fn slot(self) -> Option<&'static Slot> {
        let index = (self.0 & 0xffff_ffff) as usize;
        if index == 0 || index >= SLOTS {
            return None;
        }
        Some(&SLOT_TABLE[index])
    }

    fn generation(self) -> u64 {
        (self.0 >> 32) & GEN_MASK
    }

    /// Bytes currently charged (QuickJS heap + native).
    pub(super) fn bytes(self) -> u64 {
        match self.slot() {
            Some(slot) => {
                let state = slot.state.load(Relaxed);
                if state >> BYTES_BITS == self.generation() {
                    state & BYTES_MASK
                } else {
                    0
                }
            }
            None => 0,
        }
    }

    pub(super) fn limit(self) -> u64 {
        self.slot().map_or(u64::MAX, |s| s.limit.load(Relaxed))
    }

    /// Sets the limit and clears a previous breach (a new invocation starts); an account already
    /// above the new limit is breached at once.
    pub(super) fn reset(self, limit: u64) {
        if let Some(slot) = self.slot() {
            slot.limit.store(limit, Relaxed);
            slot.breached.store(self.bytes() > limit, Relaxed);
        }
    }

    /// Bytes that may still be charged before the limit.
    pub(super) fn remaining(self) -> u64 {
        self.limit().saturating_sub(self.bytes())
    }

    pub(super) fn breached(self) -> bool {
        self.slot().is_some_and(|s| s.breached.load(Relaxed))
    }

    pub(super) fn breach(self) {
        if let Some(slot) = self.slot() {
            slot.breached.store(true, Relaxed);
        }
    }

    /// Whether charging `n` more bytes would pass the limit.
    fn would_exceed(self, n: usize) -> bool {
        self.slot().is_some() && n as u64 > self.remaining()
    }

    fn update(self, f: impl Fn(u64) -> u64) -> Option<u64> {
        let slot = self.slot()?;
        let generation = self.generation();
        let mut state = slot.state.load(Relaxed);
        loop {
            if state >> BYTES_BITS != generation {
                return None;
            }
            let bytes = f(state & BYTES_MASK).min(BYTES_MASK);
            let next = (generation << BYTES_BITS) | bytes;
            match slot
                .state
                .compare_exchange_weak(state, next, Relaxed, Relaxed)
            {
                Ok(_) => return Some(bytes),
                Err(actual) => state = actual,
            }
        }
    }

    fn charge(self, n: u64) {
        if let Some(bytes) = self.update(|b| b.saturating_add(n)) {
            if let Some(slot) = self.slot() {
                if bytes > slot.limit.load(Relaxed) {
                    slot.breached.store(true, Relaxed);
                }
            }
        }
    }

    fn credit(self, n: u64) {
        self.update(|b| b.saturating_sub(n));
    }

    fn adjust(self, old: u64, new: u64) {
        if new > old {
            self.charge(new - old);
        } else if old > new {
            self.credit(old - new);
        }
    }
}

/// The owner of an account slot; dropping it releases the slot (later frees of allocations
/// charged to it are ignored: the generation no longer matches).
#[derive(Debug)]
pub(super) struct Account(AccountId);

impl Account {
    /// Opens an account with `limit` bytes; `None` when every slot is in use.
    pub(super) fn open(limit: u64) -> Option<Account> {
        for _ in 0..SLOTS {
            let index = 1 + CURSOR.fetch_add(1, Relaxed) % (SLOTS - 1);
            let slot = &SLOT_TABLE[index];
            if slot
                .in_use
                .compare_exchange(false, true, std::sync::atomic::Ordering::Acquire, Relaxed)
                .is_ok()
            {
                let generation = ((slot.state.load(Relaxed) >> BYTES_BITS) + 1) & GEN_MASK;
                slot.state.store(generation << BYTES_BITS, Relaxed);
                slot.limit.store(limit, Relaxed);
                slot.breached.store(false, Relaxed);
                return Some(Account(AccountId(index as u64 | (generation << 32))));
            }
        }
        None
    }

    pub(super) fn id(&self) -> AccountId {
        self.0
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        if let Some(slot) = self.0.slot() {
            let generation = (self.0.generation() + 1) & GEN_MASK;
            slot.state.store(generation << BYTES_BITS, Relaxed);
            slot.breached.store(false, Relaxed);
            slot.in_use
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }
}

/// While alive, allocations on this thread are charged to an account. Not `Send`: it restores
/// the thread's previous account when dropped.
pub(super) struct Entered {
    previous: u64,
    _not_send: PhantomData<*const ()>,
}

/// Charges this thread's allocations to `account` until the guard is dropped.
pub(super) fn enter(account: AccountId) -> Entered {
    let previous = CURRENT.try_with(|c| c.replace(account.0)).unwrap_or(0);
    Entered {
        previous,
        _not_send: PhantomData,
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}

/// Runs `f` with no account entered (for bytes that leave the isolate, e.g. a response body).
pub(super) fn untracked<R>(f: impl FnOnce() -> R) -> R {
    let _guard = enter(AccountId(0));
    f()
}

/// Charges a buffer allocated elsewhere (e.g. on the egress runtime) to the current account,
/// crediting the account it was charged to, if any: the isolate is about to own it.
pub(super) fn adopt(bytes: &mut Vec<u8>) {
    let account = current();
    if account == 0 || bytes.capacity() == 0 {
        return;
    }
    let Ok(layout) = Layout::array::<u8>(bytes.capacity()) else {
        return;
    };
    let Some((base, _)) = base_layout(layout) else {
        return;
    };
    // SAFETY: a Vec with capacity > 0 was allocated by the global allocator, which is
    // `TrackingAllocator`: the 8 bytes before its pointer are the allocation's tag, and we hold
    // the Vec exclusively, so no free can race with the tag update.
    unsafe {
        let user = bytes.as_mut_ptr();
        let tag = read_tag(user);
        if tag & !MAPPED == account {
            return;
        }
        AccountId(tag & !MAPPED).credit(base.size() as u64);
        AccountId(account).charge(base.size() as u64);
        write_tag(user, account | (tag & MAPPED));
    }
}

#[inline]
fn header(align: usize) -> usize {
    align.max(TAG_BYTES)
}

/// The layout actually requested from the system for `layout`, and the header size in front.
#[inline]
fn base_layout(layout: Layout) -> Option<(Layout, usize)> {
    let header = header(layout.align());
    let size = layout.size().checked_add(header)?;
    let base = Layout::from_size_align(size, layout.align().max(TAG_BYTES)).ok()?;
    Some((base, header))
}

/// # Safety
/// `user` is a pointer handed out by `TrackingAllocator`.
#[inline]
unsafe fn read_tag(user: *mut u8) -> u64 {
    // SAFETY: the 8 bytes before an allocation's pointer are its tag, 8-aligned.
    unsafe { user.cast::<u64>().sub(1).read() }
}

/// # Safety
/// `user` is a pointer handed out by `TrackingAllocator`.
#[inline]
unsafe fn write_tag(user: *mut u8, tag: u64) {
    // SAFETY: as for `read_tag`.
    unsafe { user.cast::<u64>().sub(1).write(tag) }
}

fn over_budget(account: u64, size: usize) -> bool {
    size >= MAP_MIN_BYTES && AccountId(account).would_exceed(size)
}

/// A zeroed, lazily backed anonymous mapping (pages are committed only when touched).
fn map(base: Layout) -> *mut u8 {
    if base.align() > 4096 {
        return ptr::null_mut();
    }
    // SAFETY: an anonymous private mapping at an address of the kernel's choice; no existing
    // memory is affected.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            base.size(),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

/// The process's allocator: `System` plus per-isolate accounting and zeroing (module docs).
pub(super) struct TrackingAllocator;

impl TrackingAllocator {
    #[inline]
    unsafe fn allocate(&self, layout: Layout, zeroed: bool) -> *mut u8 {
        let Some((base_layout, header)) = base_layout(layout) else {
            return ptr::null_mut();
        };
        let account = current();
        let mut tag = account;
        // SAFETY: `base_layout` has a non-zero size (it includes the header).
        let base = unsafe {
            if account == 0 {
                if zeroed {
                    System.alloc_zeroed(base_layout)
                } else {
                    System.alloc(base_layout)
                }
            } else if over_budget(account, base_layout.size()) {
                AccountId(account).breach();
                tag |= MAPPED;
                map(base_layout)
            } else {
                System.alloc_zeroed(base_layout)
            }
        };
        if base.is_null() {
            return base;
        }
        // SAFETY: the block is `header + size` bytes; the tag fits in the header.
        unsafe {
            let user = base.add(header);
            write_tag(user, tag);
            if account != 0 {
                AccountId(account).charge(base_layout.size() as u64);
            }
            user
        }
    }
}

// SAFETY: every block comes from `System` (or an anonymous mapping, flagged in its tag) with the
// caller's alignment; the pointer handed out is `header` bytes into it, `header` being a multiple
// of the alignment, and the same header size is recomputed from the caller's layout on free.
unsafe impl GlobalAlloc for TrackingAllocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.allocate(layout, false) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe { self.allocate(layout, true) }
    }

    #[inline]
    unsafe fn dealloc(&self, user: *mut u8, layout: Layout) {
        let Some((base_layout, header)) = base_layout(layout) else {
            return;
        };
        // SAFETY: `user` came from `allocate` with this layout.
        unsafe {
            let tag = read_tag(user);
            let base = user.sub(header);
            let account = tag & !MAPPED;
            if account != 0 {
                AccountId(account).credit(base_layout.size() as u64);
            }
            if tag & MAPPED != 0 {
                libc::munmap(base.cast(), base_layout.size());
            } else {
                System.dealloc(base, base_layout);
            }
        }
    }

    unsafe fn realloc(&self, user: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let Some((old_base, header)) = base_layout(layout) else {
            return ptr::null_mut();
        };
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return ptr::null_mut();
        };
        let Some((new_base, _)) = base_layout(new_layout) else {
            return ptr::null_mut();
        };
        let account = current();
        // SAFETY: `user` came from `allocate` with `layout`; the new block is at least
        // `min(old, new)` bytes.
        unsafe {
            let tag = read_tag(user);
            if tag & MAPPED != 0 || (account != 0 && over_budget(account, new_base.size())) {
                let moved = self.allocate(new_layout, false);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(user, moved, layout.size().min(new_size));
                    self.dealloc(user, layout);
                }
                return moved;
            }
            let base = System.realloc(user.sub(header), old_base, new_base.size());
            if base.is_null() {
                return base;
            }
            let moved = base.add(header);
            let owner = AccountId(tag);
            let (old_total, new_total) = (old_base.size() as u64, new_base.size() as u64);
            if account != 0 {
                if new_size > layout.size() {
                    ptr::write_bytes(moved.add(layout.size()), 0, new_size - layout.size());
                }
                if tag != account {
                    owner.credit(old_total);
                    AccountId(account).charge(new_total);
                    write_tag(moved, account);
                } else {
                    owner.adjust(old_total, new_total);
                }
            } else if tag != 0 {
                owner.adjust(old_total, new_total);
            }
            moved
        }
    }
}

#[global_allocator]
static GLOBAL: TrackingAllocator = TrackingAllocator;

/// QuickJS's heap, charged to the isolate's account, refused beyond the account's limit.
pub(super) struct QuickJsAllocator {
    account: AccountId,
}

impl QuickJsAllocator {
    pub(super) fn new(account: AccountId) -> Self {
        configure_mimalloc();
        QuickJsAllocator { account }
    }

    fn allocate(&mut self, total: usize, zeroed: bool) -> *mut u8 {
        if !self.admit(total) {
            return ptr::null_mut();
        }
        // QuickJS zeroes what it exposes itself (js_mallocz for ArrayBuffers, typed arrays);
        // calloc only when it asks for zeroed memory.
        // SAFETY: plain mimalloc allocation.
        let p: *mut u8 = unsafe {
            if zeroed {
                mi::mi_calloc(1, total.max(1))
            } else {
                mi::mi_malloc(total.max(1))
            }
        }
        .cast();
        if !p.is_null() {
            self.account.charge(usable(p) as u64);
        }
        p
    }

    /// Whether `n` more bytes fit; a refusal breaches the account (the invocation fails with
    /// `memory_limit` even if the JS catches QuickJS's out-of-memory error).
    fn admit(&self, n: usize) -> bool {
        if self.account.would_exceed(n) {
            self.account.breach();
            return false;
        }
        true
    }
}

/// mimalloc's settings, set before its first block (only QuickJS's heap uses it): one NUMA node.
/// Left to itself, mimalloc counts the nodes on its first allocation by probing
/// `/sys/devices/system/node/` with `access()`, and on a multi-node machine asks `getcpu` for the
/// node of each new region: syscalls a confined worker process may not make (its seccomp filter
/// kills it).
fn configure_mimalloc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    // SAFETY: sets one of mimalloc's integer options; no memory is passed.
    ONCE.call_once(|| unsafe { mi::mi_option_set(mi::mi_option_use_numa_nodes, 1) });
}

fn usable(p: *mut u8) -> usize {
    // SAFETY: `p` is a live block from mimalloc.
    unsafe { mi::mi_usable_size(p.cast()) }
}

// SAFETY: blocks come from mimalloc's malloc/calloc/realloc (aligned for any scalar type, so for
// `usize`); `usable_size` reports mimalloc's usable size of such a block.
unsafe impl rquickjs::allocator::Allocator for QuickJsAllocator {
    fn alloc(&mut self, size: usize) -> *mut u8 {
        self.allocate(size, false)
    }

    fn calloc(&mut self, count: usize, size: usize) -> *mut u8 {
        match count.checked_mul(size) {
            Some(total) => self.allocate(total, true),
            None => ptr::null_mut(),
        }
    }

    unsafe fn dealloc(&mut self, p: *mut u8) {
        self.account.credit(usable(p) as u64);
        // SAFETY: `p` came from this allocator (mimalloc).
        unsafe { mi::mi_free(p.cast()) }
    }

    unsafe fn realloc(&mut self, p: *mut u8, new_size: usize) -> *mut u8 {
        if p.is_null() {
            return self.alloc(new_size);
        }
        let old = usable(p);
        if new_size > old && !self.admit(new_size - old) {
            return ptr::null_mut();
        }
        // SAFETY: `p` came from this allocator (mimalloc).
        let q: *mut u8 = unsafe { mi::mi_realloc(p.cast(), new_size.max(1)) }.cast();
        if q.is_null() {
            return q;
        }
        self.account.adjust(old as u64, usable(q) as u64);
        q
    }

    unsafe fn usable_size(p: *mut u8) -> usize {
        usable(p)
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn allocations_are_charged_credited_and_zeroed() {
        let account = Account::open(1 << 30).unwrap();
        let id = account.id();
        let before = id.bytes();
        let v = {
            let _in = enter(id);
            let mut v: Vec<u8> = Vec::with_capacity(1 << 16);
            // SAFETY: what LLRT's allocUnsafe does; allocations under an account are zeroed, so
            // the capacity is initialised.
            #[allow(clippy::uninit_vec)]
            unsafe {
                v.set_len(1 << 16)
            };
            v
        };
        assert!(v.iter().all(|&b| b == 0));
        assert!(id.bytes() >= before + (1 << 16));
        // Freed on another thread: still credited to this account.
        std::thread::spawn(move || drop(v)).join().unwrap();
        assert!(id.bytes() < before + (1 << 16));
    }

    #[test]
    fn a_released_slot_is_not_credited_by_stale_frees() {
        let first = Account::open(1 << 30).unwrap();
        let v = {
            let _in = enter(first.id());
            vec![1u8; 4096]
        };
        drop(first);
        let second = Account::open(1 << 30).unwrap();
        let _in = enter(second.id());
        let w = vec![2u8; 8192];
        let charged = second.id().bytes();
        drop(v);
        assert_eq!(second.id().bytes(), charged);
        drop(w);
    }

    #[test]
    fn over_budget_allocations_breach_without_aborting() {
        let account = Account::open(8 << 20).unwrap();
        let id = account.id();
        let _in = enter(id);
        // 64 GiB of address space, never touched.
        let v: Vec<u8> = Vec::with_capacity(64 << 30);
        assert!(id.breached());
        drop(v);
        assert!(id.bytes() < 8 << 20);
    }

    #[test]
    fn quickjs_blocks_come_from_mimalloc_charged_and_refused_beyond_the_limit() {
        use rquickjs::allocator::Allocator;
        let account = Account::open(1 << 20).unwrap();
        let id = account.id();
        let before = id.bytes();
        let mut heap = QuickJsAllocator::new(id);
        let p = heap.calloc(10, 10);
        assert!(!p.is_null());
        // SAFETY: `p` is a live block of 100 zeroed bytes from `heap`.
        unsafe {
            assert!(mi::mi_is_in_heap_region(p.cast()));
            assert!(std::slice::from_raw_parts(p, 100).iter().all(|&b| b == 0));
        }
        assert!(id.bytes() >= before + 100);
        // SAFETY: `p` came from `heap`; the result replaces it.
        let q = unsafe { heap.realloc(p, 4000) };
        assert!(!q.is_null());
        assert!(id.bytes() >= before + 4000);
        // Beyond the account's limit: refused (QuickJS throws out-of-memory), and breached.
        assert!(heap.alloc(2 << 20).is_null());
        assert!(id.breached());
        // SAFETY: `q` came from `heap`.
        unsafe { heap.dealloc(q) };
        assert_eq!(id.bytes(), before);
    }
}
