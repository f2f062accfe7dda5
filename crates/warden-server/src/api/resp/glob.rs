//! Redis's glob patterns (KEYS, SCAN MATCH): `*`, `?`, `[abc]`, `[^a]`,
//! `[a-z]` and `\` escapes, matched over bytes.
//!
//! Must never: recurse or backtrack more than once per star (matching is
//! O(pattern × key), whatever the pattern).

/// The longest pattern KEYS and SCAN MATCH take. Matching costs up to the
/// pattern's length times the key's (a pattern of 50 000 bytes against one
/// 100 KB key took 13 s of CPU), and keys may be as long as a request:
/// this bounds one key's match to a few hundred times the cost of reading
/// it. Redis has no such bound; real patterns are far shorter.
pub const MAX_PATTERN: usize = 256;

/// Refuses a pattern longer than [`MAX_PATTERN`], with the reply's text.
pub fn check_len(p: &[u8]) -> Result<(), String> {
    if p.len() > MAX_PATTERN {
        return Err(format!(
            "ERR warden: a pattern of {} bytes; at most {MAX_PATTERN}",
            p.len()
        ));
    }
    Ok(())
}

/// The bytes every match must start with: the pattern up to its first
/// special character (so KEYS can read a prefix range, not every key).
pub fn literal_prefix(p: &[u8]) -> &[u8] {
    let end = p
        .iter()
        .position(|b| matches!(b, b'*' | b'?' | b'[' | b'\\'))
        .unwrap_or(p.len());
    &p[..end]
}

/// Whether the class starting at `p[i] == b'['` matches `c`; returns the
/// answer and the index after the class (`None` if the class never ends:
/// then `[` is a plain byte, as in Redis).
fn class(p: &[u8], mut i: usize, c: u8) -> Option<(bool, usize)> {
    i += 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut hit = false;
    loop {
        let b = *p.get(i)?;
        match b {
            b']' => return Some((hit != negate, i + 1)),
            b'\\' => {
                let e = *p.get(i + 1)?;
                hit |= e == c;
                i += 2;
            }
            _ if p.get(i + 1) == Some(&b'-') && p.get(i + 2).is_some_and(|&e| e != b']') => {
                let e = *p.get(i + 2)?;
                let (lo, hi) = if b <= e { (b, e) } else { (e, b) };
                hit |= (lo..=hi).contains(&c);
                i += 3;
            }
            _ => {
                hit |= b == c;
                i += 1;
            }
        }
    }
}

/// Whether `key` matches `pattern`.
pub fn matches(pattern: &[u8], key: &[u8]) -> bool {
    let (mut p, mut k) = (0usize, 0usize);
    // Where to resume after the last star: (pattern index, key index).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if let Some(&pc) = pattern.get(p) {
            if pc == b'*' {
                star = Some((p + 1, k));
                p += 1;
                continue;
            }
            if let Some(&kc) = key.get(k) {
                let step = match pc {
                    b'?' => Some(p + 1),
                    b'[' => match class(pattern, p, kc) {
                        Some((true, next)) => Some(next),
                        Some((false, _)) => None,
                        None => (kc == b'[').then_some(p + 1),
                    },
                    b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == kc).then_some(p + 2),
                    _ => (pc == kc).then_some(p + 1),
                };
                if let Some(next) = step {
                    p = next;
                    k += 1;
                    continue;
                }
            }
        } else if k == key.len() {
            return true;
        }
        match star {
            Some((sp, sk)) if sk < key.len() => {
                star = Some((sp, sk + 1));
                p = sp;
                k = sk + 1;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_patterns_are_refused() {
        assert!(check_len(&[b'a'; MAX_PATTERN]).is_ok());
        let e = check_len(&[b'a'; MAX_PATTERN + 1]).unwrap_err();
        assert!(e.starts_with("ERR ") && e.contains("at most 256"), "{e}");
    }

    #[test]
    fn patterns() {
        let m = |p: &str, k: &str| matches(p.as_bytes(), k.as_bytes());
        assert!(m("*", ""));
        assert!(m("*", "anything"));
        assert!(m("h?llo", "hello"));
        assert!(!m("h?llo", "hllo"));
        assert!(m("h*llo", "heeeello"));
        assert!(m("h[ae]llo", "hallo"));
        assert!(!m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo"));
        assert!(!m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo"));
        assert!(m("a\\*b", "a*b"));
        assert!(!m("a\\*b", "axb"));
        assert!(m("user:*:name", "user:42:name"));
        assert!(!m("user:*:name", "user:42:age"));
        assert!(m("*a*b*c*", "xxaxxbxxcxx"));
        assert!(!m("abc", "abcd"));
        assert!(m("a[", "a["));
        // No blow-up on many stars.
        let p = "*a".repeat(30) + "b";
        assert!(!m(&p, &"a".repeat(200)));
    }

    #[test]
    fn prefixes() {
        assert_eq!(literal_prefix(b"user:*"), b"user:");
        assert_eq!(literal_prefix(b"*"), b"");
        assert_eq!(literal_prefix(b"plain"), b"plain");
        assert_eq!(literal_prefix(b"a?b"), b"a");
    }
}
