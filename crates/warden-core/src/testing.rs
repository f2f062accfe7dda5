//! Support for the decoder fuzz tests (docs/testing.md, "Fuzzing"): byte
//! mutations of valid encodings, and a probe of the largest allocation a
//! decoder makes. Built for this crate's tests and, with the `test-support`
//! feature, for the server's (a dev-dependency feature only).
//!
//! A test derives a [`Mutation`] from three numbers its strategy draws
//! (`(any::<u8>(), any::<usize>(), any::<u64>())`), so proptest shrinks a
//! failure to the fewest, simplest edits.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Lengths and counts a hostile encoding may claim: each must be refused
/// before anything of that size is allocated.
pub const HUGE: [u64; 7] = [
    1 << 20,
    (1 << 31) - 1,
    1 << 32,
    1 << 40,
    1 << 60,
    (1 << 63) - 1,
    u64::MAX,
];

/// One edit of an encoding, chosen by `kind % 7`:
/// truncate, flip a bit, set a byte, insert a byte, delete a byte, put a
/// huge varint (a postcard length or count) in place of one byte, or
/// duplicate a run of bytes.
#[derive(Clone, Copy, Debug)]
pub struct Mutation {
    pub kind: u8,
    pub at: usize,
    pub val: u64,
}

impl From<(u8, usize, u64)> for Mutation {
    fn from((kind, at, val): (u8, usize, u64)) -> Self {
        Mutation { kind, at, val }
    }
}

/// The postcard (LEB128) varint of `v`.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

impl Mutation {
    /// `raw` with this edit applied.
    pub fn apply(&self, raw: &[u8]) -> Vec<u8> {
        let mut b = raw.to_vec();
        let len = b.len();
        // A position in the bytes (for edits that need one) or at the end.
        let pos = self.at % len.max(1);
        let gap = self.at % (len + 1);
        match self.kind % 7 {
            0 => b.truncate(gap),
            1 if len > 0 => b[pos] ^= 1 << (self.val % 8),
            2 if len > 0 => b[pos] = self.val as u8,
            3 => b.insert(gap, self.val as u8),
            4 if len > 0 => {
                b.remove(pos);
            }
            5 if len > 0 => {
                let huge = HUGE[(self.val % HUGE.len() as u64) as usize];
                b.splice(pos..=pos, varint(huge));
            }
            6 if len > 0 => {
                let run = 1 + (self.val as usize % 16).min(len - pos - 1);
                let copy = b[pos..pos + run].to_vec();
                b.splice(pos..pos, copy);
            }
            _ => b.push(self.val as u8),
        }
        b
    }
}

/// `raw` with every edit applied in order.
pub fn mutate(raw: &[u8], edits: &[(u8, usize, u64)]) -> Vec<u8> {
    edits
        .iter()
        .fold(raw.to_vec(), |b, e| Mutation::from(*e).apply(&b))
}

/// Cases a fuzz property runs: `default`, or `PROPTEST_CASES` when set
/// (an explicit `cases` in a proptest config would otherwise ignore it).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

thread_local! {
    /// Whether allocations on this thread are being measured.
    static PROBING: Cell<bool> = const { Cell::new(false) };
    /// Largest single allocation (or reallocation) seen while probing.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, recording the largest single request made on a
/// thread inside [`largest_allocation`]. Install it as the test binary's
/// `#[global_allocator]`.
pub struct ProbeAlloc;

fn note(size: usize) {
    // `try_with`: allocations during thread teardown are not probed.
    let _ = PROBING.try_with(|p| {
        if p.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the bookkeeping
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for ProbeAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: the caller's contract is passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Runs `f` and returns its result with the largest single allocation it
/// made on this thread, in bytes (0 unless [`ProbeAlloc`] is the global
/// allocator).
pub fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    PROBING.with(|p| p.set(true));
    let out = f();
    PROBING.with(|p| p.set(false));
    (out, LARGEST.with(Cell::get))
}

/// Largest allocation a decoder may make for an input of `input_len`
/// bytes: serde preallocates at most 1 MiB for a sequence whatever length
/// it claims, so anything past that plus a few times the input is a
/// length taken on trust.
pub fn allocation_bound(input_len: usize) -> usize {
    (1 << 20) + 8 * input_len + 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits() {
        let raw = [1u8, 2, 3, 4];
        assert_eq!(Mutation::from((0, 2, 0)).apply(&raw), vec![1, 2]);
        assert_eq!(Mutation::from((1, 0, 1)).apply(&raw), vec![3, 2, 3, 4]);
        assert_eq!(Mutation::from((3, 4, 9)).apply(&raw), vec![1, 2, 3, 4, 9]);
        assert_eq!(Mutation::from((4, 1, 0)).apply(&raw), vec![1, 3, 4]);
        assert_eq!(
            Mutation::from((5, 0, 4)).apply(&raw),
            [varint(1 << 60), vec![2, 3, 4]].concat()
        );
        assert_eq!(Mutation::from((6, 3, 5)).apply(&raw), vec![1, 2, 3, 4, 4]);
        for kind in 0..7 {
            let _ = Mutation::from((kind, 7, u64::MAX)).apply(&[]);
        }
        assert_eq!(varint(300), vec![0xac, 0x02]);
        assert_eq!(varint(u64::MAX).len(), 10);
    }

    #[test]
    fn the_probe_sees_a_large_allocation() {
        let (v, largest) = largest_allocation(|| Vec::<u8>::with_capacity(3 << 20));
        assert!(v.capacity() >= 3 << 20);
        assert!(largest >= 3 << 20, "{largest}");
        assert!(largest > allocation_bound(1000));
    }
}
