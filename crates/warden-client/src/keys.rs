//! Key-range helpers shared by the client and the CLI: the `range_end` that
//! makes a request cover a prefix or everything from a key on, with etcd's
//! conventions (`"\0"` means "to the end of the key space").

/// `range_end` meaning "every key >= key".
pub const FROM_KEY_END: &[u8] = b"\0";

/// The smallest key greater than every key starting with `prefix`: the prefix
/// with its last byte that is not `0xff` incremented and what follows dropped.
/// For an empty or all-`0xff` prefix every key matches, so this returns
/// `"\0"` (etcd's "to the end").
///
/// ```
/// use warden_client::keys::prefix_range_end;
/// assert_eq!(prefix_range_end(b"config/"), b"config0");
/// assert_eq!(prefix_range_end(b"a\xff"), b"b");
/// assert_eq!(prefix_range_end(b""), b"\0");
/// ```
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    FROM_KEY_END.to_vec()
}

/// `(key, range_end)` for a prefix query. An empty prefix means all keys,
/// which etcd spells key `"\0"`, range_end `"\0"`.
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (FROM_KEY_END.to_vec(), FROM_KEY_END.to_vec());
    }
    (prefix.to_vec(), prefix_range_end(prefix))
}

/// `(key, range_end)` for "every key >= key". An empty key means all keys.
pub fn from_key_range(key: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = if key.is_empty() {
        FROM_KEY_END.to_vec()
    } else {
        key.to_vec()
    };
    (key, FROM_KEY_END.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"a\xff\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0".to_vec());
        assert_eq!(prefix_range_end(b""), b"\0".to_vec());
    }

    #[test]
    fn ranges() {
        assert_eq!(prefix_range(b""), (b"\0".to_vec(), b"\0".to_vec()));
        assert_eq!(prefix_range(b"k/"), (b"k/".to_vec(), b"k0".to_vec()));
        assert_eq!(from_key_range(b""), (b"\0".to_vec(), b"\0".to_vec()));
        assert_eq!(from_key_range(b"m"), (b"m".to_vec(), b"\0".to_vec()));
    }
}
