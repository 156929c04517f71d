//! XDP and tc programs that only the benchmark and the labs load (the
//! shipped ones are in `meshgate::xdp::program`), assembled with meshgate's
//! eBPF assembler and loaded through its safe wrappers.

use meshgate::xdp::asm::{Alu, Asm, R0, R1, R6, W, helper};
use meshgate::xdp::bpf::{BpfError, Link, Program, action};

/// A program that drops every frame: the benchmark's baseline, to measure
/// the traffic generator's own cost on a path where nobody forwards.
#[derive(Debug)]
pub struct DropProgram {
    pub prog: Program,
}

impl DropProgram {
    pub fn load() -> Result<DropProgram, BpfError> {
        let mut a = Asm::new();
        a.alu64_imm(Alu::Mov, R0, action::DROP as i32).exit();
        Ok(DropProgram {
            prog: Program::load_xdp(&a.finish(), "meshgate_drop")?,
        })
    }
}

/// Receive-side scaling for a veth: a tcx egress program on the peer of a
/// multi-queue veth that sends each frame to queue `hash % queues`, so the
/// veth's receive queues see flows spread as a NIC's RSS would spread them.
/// (A bridge transmits forwarded frames on one queue otherwise.)
///
/// How: it stores `hash % queues + 1` in `skb->queue_mapping`, which the
/// kernel's transmit-queue choice (`skb_tx_hash`) takes as a recorded
/// receive queue, `queue_mapping - 1`, and keeps.
#[derive(Debug)]
pub struct RssSteering {
    pub prog: Program,
    pub link: Link,
}

impl RssSteering {
    /// Attaches to the egress of `ifindex` (in the caller's namespace).
    pub fn attach(ifindex: u32, ifname: &str, queues: u32) -> Result<RssSteering, BpfError> {
        let mut a = Asm::new();
        // A local socket's packets carry its random `txhash`, which TCP
        // changes after a retransmission timeout: a connection would move
        // to another queue mid-way, which no NIC does. Dropping the hash
        // makes the kernel compute it from the addresses and ports, as RSS.
        a.alu64_reg(Alu::Mov, R6, R1)
            .call(helper::SET_HASH_INVALID)
            .alu64_reg(Alu::Mov, R1, R6)
            .call(helper::GET_HASH_RECALC)
            .alu32_imm(Alu::Mod, R0, queues.max(1) as i32)
            .alu64_imm(Alu::Add, R0, 1)
            .stx(W, R6, 12, R0) // __sk_buff.queue_mapping
            .alu64_imm(Alu::Mov, R0, 0) // TC_ACT_OK
            .exit();
        let prog = Program::load_tc(&a.finish(), "meshgate_rss")?;
        let link = prog.attach_tcx_egress(ifindex, ifname)?;
        Ok(RssSteering { prog, link })
    }
}
