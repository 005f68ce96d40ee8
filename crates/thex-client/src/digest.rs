//! The content address of what a server publishes (the bundle, the tokenizer file): SHA-256 in
//! lowercase hex. The server announces it in `/v1/info`; the client checks downloads and names
//! its cache files by it.

use sha2::{Digest, Sha256};

/// The SHA-256 of `bytes`, as 64 lowercase hex digits.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let mut out = String::with_capacity(64);
    for b in digest {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 15)]));
    }
    out
}

/// Whether `s` is a SHA-256 as [`sha256_hex`] writes it (64 lowercase hex digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| HEX.contains(&b))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_test_vector() {
        // FIPS 180-2, appendix B.1.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(is_sha256_hex(&sha256_hex(b"")));
    }

    #[test]
    fn only_a_digest_names_a_cache_file() {
        assert!(is_sha256_hex(&"0123456789abcdef".repeat(4)));
        for bad in [
            "",
            "../../etc/passwd",
            &"a".repeat(63),
            &"a".repeat(65),
            &"A".repeat(64),
            &format!("{}/", "a".repeat(63)),
            &format!("{}é", "a".repeat(62)),
        ] {
            assert!(!is_sha256_hex(bad), "{bad}");
        }
    }
}
