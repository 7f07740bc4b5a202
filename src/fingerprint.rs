//! Content fingerprints: what ties a trajectory to its initial weights, a kernel file to the
//! model and data it was computed from, and each trajectory line to the lines before it.
//!
//! FNV-1a (64 bits): not cryptographic, but a change of any byte changes it, which is what
//! catching a swapped checkpoint, an edited split or a torn line needs; it is stable across
//! platforms and versions, so fingerprints written by one build are checked by another.

use std::fmt::Write as _;

/// A running FNV-1a hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(u64);

impl Default for Fingerprint {
    fn default() -> Fingerprint {
        Fingerprint(0xcbf2_9ce4_8422_2325)
    }
}

impl Fingerprint {
    pub fn new() -> Fingerprint {
        Fingerprint::default()
    }

    pub fn update(&mut self, bytes: &[u8]) -> &mut Fingerprint {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }

    /// Adds a field with its length, so that ("ab", "c") and ("a", "bc") differ.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Fingerprint {
        self.update(&(bytes.len() as u64).to_le_bytes()).update(bytes)
    }

    /// 16 hex digits.
    pub fn hex(&self) -> String {
        let mut s = String::with_capacity(16);
        let _ = write!(s, "{:016x}", self.0);
        s
    }
}

/// The fingerprint of `bytes`, as hex.
pub fn of(bytes: &[u8]) -> String {
    Fingerprint::new().update(bytes).hex()
}

/// The fingerprint of named tensors: each name, then its bytes as stored (dtype included, so the
/// same values in another dtype differ), in the order given.
pub fn tensors<'a>(named: impl IntoIterator<Item = (&'a str, &'a tch::Tensor)>) -> String {
    let mut hash = Fingerprint::new();
    for (name, tensor) in named {
        let host = tensor.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; host.numel() * host.kind().elt_size_in_bytes()];
        host.copy_data_u8(&mut bytes, host.numel());
        hash.update(name.as_bytes()).update(&bytes);
    }
    hash.hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_and_field_boundaries() {
        // FNV-1a 64 test vectors.
        assert_eq!(of(b""), "cbf29ce484222325");
        assert_eq!(of(b"a"), "af63dc4c8601ec8c");
        let (mut x, mut y) = (Fingerprint::new(), Fingerprint::new());
        x.field(b"ab").field(b"c");
        y.field(b"a").field(b"bc");
        assert_ne!(x, y);
    }
}
