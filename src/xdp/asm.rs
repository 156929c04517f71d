//! A small eBPF assembler: just the instructions meshgate's XDP programs use,
//! with named labels resolved at `finish`.
//!
//! Encoding (`Documentation/bpf/standardization/instruction-set.rst`): an
//! 8-byte instruction holds an opcode (class | size/operation | mode/source),
//! the destination and source registers, a 16-bit offset and a 32-bit
//! immediate. Jump offsets count instructions after the jump.

use super::bpf::Insn;
use std::collections::HashMap;

/// Register 0: helpers' and the program's return value.
pub const R0: u8 = 0;
/// Register 1: the context at entry; a helper's first argument.
pub const R1: u8 = 1;
/// Register 2: a helper's second argument.
pub const R2: u8 = 2;
/// Register 3: a helper's third argument.
pub const R3: u8 = 3;
/// Register 4: a helper's fourth argument.
pub const R4: u8 = 4;
/// Register 5: a helper's fifth argument.
pub const R5: u8 = 5;
/// Register 6: callee-saved (kept across helper calls).
pub const R6: u8 = 6;
/// Register 7: callee-saved.
pub const R7: u8 = 7;
/// Register 8: callee-saved.
pub const R8: u8 = 8;
/// Register 9: callee-saved.
pub const R9: u8 = 9;
/// Register 10: the read-only frame pointer (the stack grows down from it).
pub const R10: u8 = 10;

// Classes.
const LDX: u8 = 0x01;
const STX: u8 = 0x03;
const ALU: u8 = 0x04;
const JMP: u8 = 0x05;
const JMP32: u8 = 0x06;
const ALU64: u8 = 0x07;
// Sizes and modes.
/// Access size: 4 bytes (word).
pub const W: u8 = 0x00;
/// Access size: 2 bytes (half word).
pub const H: u8 = 0x08;
/// Access size: 1 byte.
pub const B: u8 = 0x10;
/// Access size: 8 bytes (double word).
pub const DW: u8 = 0x18;
const MEM: u8 = 0x60;
const IMM: u8 = 0x00;
// Sources.
const K: u8 = 0x00;
const X: u8 = 0x08;

/// ALU operations.
#[derive(Debug, Clone, Copy)]
pub enum Alu {
    /// dst += src
    Add = 0x00,
    /// dst -= src
    Sub = 0x10,
    /// dst *= src
    Mul = 0x20,
    /// dst |= src
    Or = 0x40,
    /// dst &= src
    And = 0x50,
    /// dst <<= src
    Lsh = 0x60,
    /// dst >>= src (logical)
    Rsh = 0x70,
    /// dst %= src
    Mod = 0x90,
    /// dst ^= src
    Xor = 0xa0,
    /// dst = src
    Mov = 0xb0,
}

/// Jump conditions.
#[derive(Debug, Clone, Copy)]
pub enum Jmp {
    /// Jump when dst == src.
    Eq = 0x10,
    /// Jump when dst > src (unsigned).
    Gt = 0x20,
    /// Jump when dst != src.
    Ne = 0x50,
    /// Jump when dst < src (unsigned).
    Lt = 0xa0,
}

/// `BPF_PSEUDO_MAP_FD`: the 64-bit immediate is a map file descriptor.
const PSEUDO_MAP_FD: u8 = 1;

/// Helper function ids.
pub mod helper {
    /// `bpf_map_lookup_elem(map, key)`: a pointer to the value, or 0.
    pub const MAP_LOOKUP_ELEM: i32 = 1;
    /// `bpf_map_update_elem(map, key, value, flags)`.
    pub const MAP_UPDATE_ELEM: i32 = 2;
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds.
    pub const KTIME_GET_NS: i32 = 5;
    /// `bpf_get_hash_recalc(skb)` (tc programs).
    pub const GET_HASH_RECALC: i32 = 34;
    /// `bpf_set_hash_invalid(skb)` (tc programs).
    pub const SET_HASH_INVALID: i32 = 41;
    /// `bpf_redirect_map(map, key, flags)`: to an XSKMAP's socket.
    pub const REDIRECT_MAP: i32 = 51;
}

#[derive(Default)]
/// A program being assembled: its instructions, labels and the jumps
/// that wait for a label's place.
pub struct Asm {
    insns: Vec<Insn>,
    labels: HashMap<&'static str, usize>,
    fixups: Vec<(usize, &'static str)>,
}

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | (dst & 0x0f),
        off,
        imm,
    }
}

impl Asm {
    /// An empty program.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the next instruction with `name`.
    pub fn label(&mut self, name: &'static str) -> &mut Self {
        let prev = self.labels.insert(name, self.insns.len());
        assert!(prev.is_none(), "label {name} defined twice");
        self
    }

    /// `dst = *(size *)(src + off)`
    pub fn ldx(&mut self, size: u8, dst: u8, src: u8, off: i16) -> &mut Self {
        self.insns.push(insn(LDX | size | MEM, dst, src, off, 0));
        self
    }

    /// `*(size *)(dst + off) = src`
    pub fn stx(&mut self, size: u8, dst: u8, off: i16, src: u8) -> &mut Self {
        self.insns.push(insn(STX | size | MEM, dst, src, off, 0));
        self
    }

    /// 64-bit `dst op= imm`
    pub fn alu64_imm(&mut self, op: Alu, dst: u8, imm: i32) -> &mut Self {
        self.insns.push(insn(ALU64 | op as u8 | K, dst, 0, 0, imm));
        self
    }

    /// 64-bit `dst op= src`
    pub fn alu64_reg(&mut self, op: Alu, dst: u8, src: u8) -> &mut Self {
        self.insns.push(insn(ALU64 | op as u8 | X, dst, src, 0, 0));
        self
    }

    /// 32-bit `dst op= imm` (the upper half of dst becomes zero).
    pub fn alu32_imm(&mut self, op: Alu, dst: u8, imm: i32) -> &mut Self {
        self.insns.push(insn(ALU | op as u8 | K, dst, 0, 0, imm));
        self
    }

    /// `if dst op imm goto label` (64-bit compare, imm sign-extended).
    pub fn jmp_imm(&mut self, op: Jmp, dst: u8, imm: i32, label: &'static str) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(insn(JMP | op as u8 | K, dst, 0, 0, imm));
        self
    }

    /// `if (u32)dst op (u32)imm goto label`
    pub fn jmp32_imm(&mut self, op: Jmp, dst: u8, imm: i32, label: &'static str) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(insn(JMP32 | op as u8 | K, dst, 0, 0, imm));
        self
    }

    /// `if dst op src goto label`
    pub fn jmp_reg(&mut self, op: Jmp, dst: u8, src: u8, label: &'static str) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(insn(JMP | op as u8 | X, dst, src, 0, 0));
        self
    }

    /// `goto label`
    pub fn ja(&mut self, label: &'static str) -> &mut Self {
        self.fixups.push((self.insns.len(), label));
        self.insns.push(insn(JMP, 0, 0, 0, 0));
        self
    }

    /// `dst = map` (a 64-bit immediate holding a map fd; two instructions).
    pub fn ld_map_fd(&mut self, dst: u8, fd: i32) -> &mut Self {
        self.insns.push(insn(DW | IMM, dst, PSEUDO_MAP_FD, 0, fd));
        self.insns.push(insn(0, 0, 0, 0, 0));
        self
    }

    /// Calls kernel function `btf_id` of vmlinux (`BPF_PSEUDO_KFUNC_CALL`).
    pub fn call_kfunc(&mut self, btf_id: i32) -> &mut Self {
        self.insns.push(insn(JMP | 0x80, 0, 2, 0, btf_id));
        self
    }

    /// Calls helper `helper` ([`helper`]); arguments in r1–r5, result in r0.
    pub fn call(&mut self, helper: i32) -> &mut Self {
        self.insns.push(insn(JMP | 0x80, 0, 0, 0, helper));
        self
    }

    /// Returns r0.
    pub fn exit(&mut self) -> &mut Self {
        self.insns.push(insn(JMP | 0x90, 0, 0, 0, 0));
        self
    }

    /// Resolves labels. Panics on an undefined label or an out-of-range jump
    /// (programming errors in meshgate, not input errors).
    pub fn finish(&mut self) -> Vec<Insn> {
        for &(at, label) in &self.fixups {
            let target = *self
                .labels
                .get(label)
                .unwrap_or_else(|| panic!("undefined label {label}"));
            let off = target as isize - (at as isize + 1);
            self.insns[at].off = i16::try_from(off).expect("jump in range");
        }
        std::mem::take(&mut self.insns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_kernel() {
        let mut a = Asm::new();
        a.ldx(W, R2, R1, 0) // r2 = *(u32 *)(r1 + 0)
            .jmp_reg(Jmp::Gt, R4, R3, "out") // if r4 > r3 goto out
            .alu64_imm(Alu::Mov, R0, 2) // r0 = 2
            .label("out")
            .exit();
        let p = a.finish();
        // Reference encodings, from `llvm-objdump -d` of the same C.
        assert_eq!(
            p[0],
            Insn {
                code: 0x61,
                regs: 0x12,
                off: 0,
                imm: 0
            }
        );
        assert_eq!(
            p[1],
            Insn {
                code: 0x2d,
                regs: 0x34,
                off: 1,
                imm: 0
            }
        );
        assert_eq!(
            p[2],
            Insn {
                code: 0xb7,
                regs: 0x00,
                off: 0,
                imm: 2
            }
        );
        assert_eq!(
            p[3],
            Insn {
                code: 0x95,
                regs: 0x00,
                off: 0,
                imm: 0
            }
        );
    }

    #[test]
    fn map_fd_is_a_wide_immediate() {
        let mut a = Asm::new();
        a.ld_map_fd(R1, 7);
        let p = a.finish();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].code, p[0].regs, p[0].imm), (0x18, 0x11, 7));
    }

    #[test]
    #[should_panic(expected = "undefined label")]
    fn undefined_label_panics() {
        Asm::new().ja("nowhere").finish();
    }
}
