//! Just enough of BTF (`Documentation/bpf/btf.rst`) to find a kernel
//! function's type id in `/sys/kernel/btf/vmlinux`, which a kfunc call
//! names. No `unsafe`: the blob is read and walked with bounds checks.

/// Extra bytes after a type's 12-byte header, by kind (`vlen` entries).
fn extra(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 | 14 | 17 => 4,             // INT, VAR, DECL_TAG
        3 => 12,                      // ARRAY
        4 | 5 | 15 | 19 => vlen * 12, // STRUCT, UNION, DATASEC, ENUM64
        6 | 13 => vlen * 8,           // ENUM, FUNC_PROTO
        2 | 7..=12 | 16 | 18 => 0,    // PTR, FWD, TYPEDEF…FUNC, FLOAT, TYPE_TAG
        _ => return None,
    })
}

/// The type id of function `name` (kind FUNC) in the BTF blob `b`.
pub fn func_id(b: &[u8], name: &str) -> Option<u32> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    if b.get(0..2)? != [0x9f, 0xeb] {
        return None; // not little-endian BTF
    }
    let hdr = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let strings = b.get(hdr + str_off..)?;
    let types = b.get(hdr + type_off..hdr + type_off + type_len)?;
    let name_at = |off: usize| -> Option<&[u8]> {
        let s = strings.get(off..)?;
        Some(&s[..s.iter().position(|&c| c == 0)?])
    };
    let mut at = 0;
    let mut id = 1;
    while at + 12 <= types.len() {
        let word = |i: usize| u32::from_le_bytes(types[at + i..at + i + 4].try_into().expect("4"));
        let (name_off, info) = (word(0) as usize, word(4));
        let kind = (info >> 24) & 0x1f;
        if kind == 12 && name_at(name_off) == Some(name.as_bytes()) {
            return Some(id);
        }
        at += 12 + extra(kind, (info & 0xffff) as usize)?;
        id += 1;
    }
    None
}

/// The type id of `name` in the running kernel's BTF, if it has it.
pub fn vmlinux_func_id(name: &str) -> Option<u32> {
    func_id(&std::fs::read("/sys/kernel/btf/vmlinux").ok()?, name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob with an INT, a FUNC_PROTO of one parameter and two FUNCs.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0f\0g\0a\0";
        let mut t = Vec::new();
        let ty = |t: &mut Vec<u8>, name: u32, kind: u32, vlen: u32, x: u32| {
            t.extend_from_slice(&name.to_le_bytes());
            t.extend_from_slice(&((kind << 24) | vlen).to_le_bytes());
            t.extend_from_slice(&x.to_le_bytes());
        };
        ty(&mut t, 1, 1, 0, 4); // [1] int
        t.extend_from_slice(&0u32.to_le_bytes());
        ty(&mut t, 0, 13, 1, 1); // [2] proto (int a)
        t.extend_from_slice(&[9, 0, 0, 0, 1, 0, 0, 0]);
        ty(&mut t, 5, 12, 0, 2); // [3] f
        ty(&mut t, 7, 12, 0, 2); // [4] g
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [
            24u32,
            0,
            t.len() as u32,
            t.len() as u32,
            strings.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(strings);
        b
    }

    #[test]
    fn finds_functions_by_name() {
        let b = blob();
        assert_eq!(func_id(&b, "f"), Some(3));
        assert_eq!(func_id(&b, "g"), Some(4));
        assert_eq!(func_id(&b, "int"), None, "not a function");
        assert_eq!(func_id(&b, "h"), None);
        for cut in 0..b.len() {
            let _ = func_id(&b[..cut], "g"); // never panics
        }
    }

    #[test]
    fn the_running_kernel_has_the_vlan_kfunc() {
        // Kernel 6.8 and later; meshgate's labs run on 6.18.
        assert!(vmlinux_func_id("bpf_xdp_metadata_rx_vlan_tag").is_some());
    }
}
