//! Padmé padding (Nikitin et al., "Reducing Metadata Leakage from Encrypted
//! Files and Communication with PURBs", PETS 2019): a length `L` is rounded up
//! so that only its top ~log2(log2(L)) bits remain significant. Overhead is at
//! most ~12 % and the number of distinct padded sizes is logarithmic.

/// The padded length for a plaintext/ciphertext of `len` bytes (never smaller).
pub fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // floor(log2 len)
    let s = 64 - u64::from(e.leading_zeros()); // floor(log2 e) + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    (len + mask) & !mask
}

#[cfg(test)]
mod tests {
    use super::padme;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        assert_eq!(padme(0), 0);
        assert_eq!(padme(1), 1);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(100), 104);
        // 4 MiB + small overhead rounds to a 128 KiB multiple.
        assert_eq!(padme(4 * 1024 * 1024 + 1032), 4 * 1024 * 1024 + 128 * 1024);
    }

    proptest! {
        #[test]
        fn never_shrinks_and_overhead_bounded(len in 1u64..(1u64 << 40)) {
            let p = padme(len);
            prop_assert!(p >= len);
            // overhead ≤ 12 % (+1 byte rounding for tiny sizes)
            prop_assert!((p - len) as f64 <= 0.12 * len as f64 + 1.0);
            prop_assert_eq!(padme(p), p, "padding is idempotent");
        }
    }
}
