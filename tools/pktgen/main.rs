//! `meshgate-pktgen`: an AF_XDP traffic generator in the spirit of the
//! kernel's pktgen (which this machine's kernel lacks), and the AF_XDP
//! reflector that bounds what any AF_XDP forwarder can do on a path.
//!
//! `send` builds UDP or TCP-SYN frames to a published port with N flows
//! (source ports, and source addresses beyond 50 000 flows), of a chosen
//! size, at a target rate or flat out, for a duration or a count. It
//! receives what comes back on the same interface (VXLAN from meshgate or
//! the kernel, or reflected frames), finds the timestamp it wrote in each
//! frame (UDP payload; for TCP the acknowledgment field and a marker in the
//! window), and reports sent, received, lost, rates and latency percentiles.
//!
//! `datagrams` sends given payloads (and, with `--junk`, random ones) from
//! an ordinary UDP socket, flat out: no privileges needed, as an
//! unprivileged process on a node would flood or forge.
//!
//! `reflect` swaps the Ethernet addresses of every frame to an address and
//! sends it back: the ceiling of an AF_XDP forwarder on this path.

mod frames;
mod handshake;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use hdrhistogram::Histogram;
use serde::Serialize;

use meshgate::dataplane::tables::{OUTER_TEMPLATE_LEN, OuterTemplate, Tunnel};
use meshgate::netlink::Rtnl;
use meshgate::wire::{MacAddr, vxlan};
use meshgate::xdp::bpf::xdp_flags;
use meshgate::xdp::program::CaptureProgram;
use meshgate::xdp::umem::KERNEL_HEADROOM;
use meshgate::xdp::{BindMode, FrameToken, Xsk, XskConfig};

use frames::{FlowSet, Proto};

#[derive(Parser)]
#[command(
    name = "meshgate-pktgen",
    about = "AF_XDP traffic generator and reflector"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum ProtoArg {
    Udp,
    TcpSyn,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send frames and count what comes back.
    Send {
        #[arg(long)]
        iface: String,
        /// Source address of the first flow.
        #[arg(long)]
        src: Ipv4Addr,
        #[arg(long)]
        dst: Ipv4Addr,
        /// Destination MAC (default: resolved through the kernel).
        #[arg(long)]
        dst_mac: Option<MacAddr>,
        /// Send IPv6 UDP from this address (the first flow's) to --dst6
        /// instead (MACs as for --dst).
        #[arg(long, requires = "dst6")]
        src6: Option<std::net::Ipv6Addr>,
        #[arg(long, requires = "src6")]
        dst6: Option<std::net::Ipv6Addr>,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[arg(long, value_enum, default_value = "udp")]
        proto: ProtoArg,
        #[arg(long, default_value_t = 1000)]
        flows: u32,
        /// Frame size in bytes including the 4-byte FCS (64 to 1500 + 18).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Packets per second; 0 sends flat out.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Stop after this many packets instead.
        #[arg(long)]
        count: Option<u64>,
        /// CPU to pin the generator to.
        #[arg(long)]
        cpu: Option<usize>,
        /// Flows per source address (then the next address is used).
        #[arg(long, default_value_t = 50_000)]
        ports_per_addr: u32,
        /// The flow of the first packet (packets then go through the flows
        /// in turn): with --flows larger than a run sends, every packet
        /// is a new flow, and runs from distinct first flows share none.
        #[arg(long, default_value_t = 0)]
        first_flow: u32,
        /// TCP handshakes with a close (--proto tcp-syn): the generator
        /// also plays the tasks, answering in VXLAN, and completes each
        /// connection as its client; "received" counts the connections
        /// completed (no latency is measured).
        #[arg(long, requires = "proto")]
        handshakes: bool,
        /// Transmit only: attach no XDP program, receive nothing.
        #[arg(long)]
        no_capture: bool,
        /// Sleep between paced bursts instead of spinning: the generator's
        /// CPU then shows other work on it (for CPU measurements), but
        /// frames are timestamped late on receipt (latency reads high).
        #[arg(long)]
        sleep: bool,
        #[arg(long)]
        json: bool,
    },
    /// Send the given payloads round-robin from an ordinary UDP socket,
    /// as fast as it takes them, for a time; prints how many were sent.
    Datagrams {
        /// ADDRESS:PORT to send to.
        #[arg(long)]
        to: std::net::SocketAddrV4,
        #[arg(long)]
        duration: f64,
        /// A payload in hex; repeatable.
        #[arg(long = "hex")]
        hex: Vec<String>,
        /// Also a random payload of 1 to 1 400 bytes between them.
        #[arg(long)]
        junk: bool,
    },
    /// Swap MACs and send every TCP/UDP frame to `addr` back (the AF_XDP ceiling).
    Reflect {
        #[arg(long)]
        iface: String,
        #[arg(long)]
        addr: Ipv4Addr,
        #[arg(long)]
        cpu: Option<usize>,
        /// Stop after this many seconds (default: SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<f64>,
        /// Sleep in poll() when idle instead of spinning.
        #[arg(long)]
        interrupt: bool,
        /// Also put each frame in VXLAN to this VTEP with meshgate's own
        /// encapsulation (no translation): the ceiling of an AF_XDP
        /// forwarder whose frames grow as meshgate's do.
        #[arg(long)]
        encap_to: Option<Ipv4Addr>,
    },
}

/// Transmit frames a handshake trial keeps for its answers.
const ANSWER_RESERVE: usize = 1024;

/// The numbers of one `send`.
#[derive(Debug, Serialize)]
pub struct SendReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub loss: f64,
    pub duration_s: f64,
    pub tx_pps: f64,
    pub rx_pps: f64,
    pub rx_gbps: f64,
    pub frame_bytes: usize,
    pub flows: u32,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Frames received that were not ours (no marker).
    pub foreign: u64,
    /// Frames the kernel could not put on the generator's own receive ring
    /// (ring full, or no free frame in the fill ring): lost at the
    /// generator, not in the path under test.
    pub rx_dropped_here: u64,
    /// Busy CPU time of the whole machine while sending (all CPUs, from
    /// /proc/stat: user, nice, system, irq, softirq, steal), in seconds.
    pub cpu_busy_s: f64,
}

/// Busy jiffies of the whole machine (the first line of /proc/stat).
fn busy_jiffies() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

/// Clock ticks per second of /proc/stat.
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

fn pin(cpu: Option<usize>) {
    if let Some(id) = cpu {
        core_affinity::set_for_current(core_affinity::CoreId { id });
    }
}

/// Resolves `dst` through the kernel's neighbour table (it ARPs for us).
fn resolve_mac(ifname: &str, dst: Ipv4Addr) -> Result<MacAddr> {
    let mut rtnl = Rtnl::new()?;
    let link = rtnl.link(ifname)?;
    for _ in 0..40 {
        if let Some((_, m)) = rtnl
            .neighbours(link.index)?
            .into_iter()
            .find(|(ip, _)| *ip == dst)
        {
            return Ok(m);
        }
        let _ = rtnl.resolve(link.index, dst);
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("cannot resolve {dst} on {ifname} (no ARP answer); give --dst-mac")
}

/// Opens the socket; with `capture`, attaches a program that sends every
/// TCP/UDP frame arriving on the interface to it.
fn open(
    ifname: &str,
    frames: u32,
    capture: bool,
) -> Result<(Xsk, Option<(CaptureProgram, meshgate::xdp::bpf::Link)>)> {
    let mut rtnl = Rtnl::new()?;
    let link = rtnl.link(ifname)?;
    let xsk = Xsk::open(&XskConfig {
        ifname: ifname.into(),
        queues: vec![0],
        frames_per_queue: frames,
        frame_size: 2048,
        ring_size: frames / 2,
        mode: BindMode::Auto,
        huge_pages: false,
    })?;
    if !capture {
        return Ok((xsk, None));
    }
    let prog = CaptureProgram::load(None, None, 1, meshgate::xdp::bpf::action::PASS)?;
    prog.register_socket(0, xsk.ports[0].raw_fd())?;
    let l = prog.attach(link.index, xdp_flags::DRV_MODE, ifname)?;
    Ok((xsk, Some((prog, l))))
}

#[allow(clippy::too_many_arguments)]
fn send(
    iface: &str,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dst_mac: Option<MacAddr>,
    port: u16,
    proto: Proto,
    flows: u32,
    size: usize,
    rate: u64,
    duration: f64,
    count: Option<u64>,
    sleep: bool,
    (ports_per_addr, first_flow, handshakes): (u32, u32, bool),
    no_capture: bool,
    v6: Option<(std::net::Ipv6Addr, std::net::Ipv6Addr)>,
) -> Result<SendReport> {
    let mut rtnl = Rtnl::new()?;
    let link = rtnl.link(iface)?;
    let dst_mac = match dst_mac {
        Some(m) => m,
        None => resolve_mac(iface, dst)?,
    };
    let set = FlowSet::new(
        link.mac,
        dst_mac,
        src,
        dst,
        port,
        proto,
        flows,
        size,
        ports_per_addr,
    )?;
    let set = match v6 {
        Some((s6, d6)) => set.with_ipv6(s6, d6)?,
        None => set,
    };
    let (mut xsk, _capture) = open(iface, 8192, !no_capture)?;
    let umem = xsk.umem.clone();
    let port_ = &mut xsk.ports[0];
    let mut pool = std::mem::take(&mut xsk.initial[0]);
    // Half the frames feed the fill ring (receive), half carry transmits.
    let mut rx_pool: Vec<FrameToken> = pool.drain(..pool.len() / 2).collect();
    let mut tx_pool = pool;
    port_.fill(&mut rx_pool);

    let start = Instant::now();
    let cpu0 = busy_jiffies();
    let mut cpu1 = None;
    let stop_at = Duration::from_secs_f64(duration);
    let limit = count.unwrap_or(u64::MAX);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)?;
    let (mut sent, mut received, mut foreign, mut rx_bytes) = (0u64, 0u64, 0u64, 0u64);
    let mut batch: Vec<FrameToken> = Vec::with_capacity(64);
    let mut rx: Vec<FrameToken> = Vec::with_capacity(64);
    let mut done: Vec<FrameToken> = Vec::with_capacity(256);
    let mut answers: Vec<FrameToken> = Vec::with_capacity(64);
    let mut seq: u32 = first_flow;
    let mut sending_until = None;
    // Paced sending: bursts of about 100 µs of traffic, so that the
    // generator does not send in clumps (which would show as latency);
    // with `sleep` it sleeps between bursts rather than spinning (spinning
    // would hide other work on its CPU from CPU measurements).
    let burst: u64 = if rate == 0 {
        64
    } else {
        (rate / 10_000).clamp(1, 64)
    };
    loop {
        let now = start.elapsed();
        let sending = now < stop_at && sent < limit;
        if !sending && sending_until.is_none() {
            sending_until = Some(now);
            cpu1 = Some(busy_jiffies());
        }
        // Drain for 300 ms after the last transmit.
        if let Some(t) = sending_until {
            if now > t + Duration::from_millis(300) {
                break;
            }
        }
        port_.complete(&mut done, 256);
        tx_pool.append(&mut done);
        if sending {
            let allowed = if rate == 0 {
                u64::MAX
            } else {
                (rate as f64 * now.as_secs_f64()) as u64 + 1
            };
            let mut want = allowed.saturating_sub(sent).min(burst).min(limit - sent) as usize;
            if handshakes {
                // Frames kept for answers: a connection under way counts
                // for more than a new SYN, which flat out would take them
                // all and measure the generator's starvation.
                want = want.min(tx_pool.len().saturating_sub(ANSWER_RESERVE));
            }
            let ts = now.as_nanos() as u64;
            for _ in 0..want {
                let Some(mut t) = tx_pool.pop() else { break };
                let len = {
                    let (chunk, _) = umem.frame(&mut t);
                    set.write(&mut chunk[KERNEL_HEADROOM..], seq, ts)
                };
                umem.set_data(&mut t, KERNEL_HEADROOM, len);
                batch.push(t);
                seq = seq.wrapping_add(1);
            }
            let n = port_.transmit(&mut batch);
            sent += n as u64;
            tx_pool.append(&mut batch);
            port_.kick();
        }
        port_.recv(&mut rx, 64);
        let now_ns = start.elapsed().as_nanos() as u64;
        for mut t in rx.drain(..) {
            let len = t.len() as usize;
            if handshakes {
                let (chunk, off) = umem.frame(&mut t);
                let f = &chunk[off..off + len];
                match tx_pool.pop() {
                    Some(mut a) => {
                        let (out, _) = umem.frame(&mut a);
                        match handshake::answer(f, &mut out[KERNEL_HEADROOM..]) {
                            Some(ans) => {
                                received += u64::from(ans.completes);
                                umem.set_data(&mut a, KERNEL_HEADROOM, ans.len);
                                answers.push(a);
                            }
                            None => {
                                foreign += 1;
                                tx_pool.push(a);
                            }
                        }
                    }
                    // No frame to answer with: the connection is lost,
                    // as it would be to a task that drops the segment.
                    None => foreign += 1,
                }
            } else {
                let (chunk, off) = umem.frame(&mut t);
                match frames::latency_ns(&chunk[off..off + len], now_ns) {
                    Some(lat) => {
                        received += 1;
                        rx_bytes += len as u64 + 4;
                        hist.saturating_record(lat.max(1));
                    }
                    None => foreign += 1,
                }
            }
            umem.reset(&mut t);
            rx_pool.push(t);
        }
        port_.fill(&mut rx_pool);
        if !answers.is_empty() {
            // Answers that find no room in the ring are lost, as segments.
            port_.transmit(&mut answers);
            tx_pool.append(&mut answers);
            port_.kick();
        }
        if !sending {
            std::thread::sleep(Duration::from_micros(50));
        } else if rate > 0 && sleep {
            // Sleep until the next burst is due.
            let next = Duration::from_secs_f64((sent + burst) as f64 / rate as f64);
            let now = start.elapsed();
            if next > now + Duration::from_micros(20) {
                std::thread::sleep(next - now);
            }
        }
    }
    let dur = sending_until
        .unwrap_or(start.elapsed())
        .as_secs_f64()
        .max(1e-9);
    let lost = sent.saturating_sub(received);
    let xs = port_.stats();
    // An empty fill ring counts in rx_dropped too: not added twice.
    let rx_dropped_here = xs.rx_dropped + xs.rx_ring_full;
    let q = |p: f64| hist.value_at_quantile(p) as f64 / 1000.0;
    Ok(SendReport {
        sent,
        received,
        lost,
        loss: if sent > 0 {
            lost as f64 / sent as f64
        } else {
            0.0
        },
        duration_s: dur,
        tx_pps: sent as f64 / dur,
        rx_pps: received as f64 / dur,
        rx_gbps: rx_bytes as f64 * 8.0 / dur / 1e9,
        frame_bytes: size,
        flows,
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: hist.max() as f64 / 1000.0,
        foreign,
        rx_dropped_here,
        cpu_busy_s: (cpu1.unwrap_or_else(busy_jiffies) - cpu0) as f64 / ticks_per_second(),
    })
}

/// Bytes the VXLAN encapsulation adds in front of a frame.
const VXLAN_OUTER: usize = vxlan::ENCAP_LEN;

/// meshgate's outer headers for `reflect --encap-to`, from `frame` (its
/// source MAC is the VTEP's next hop, its destination this side's MAC),
/// with the inner Ethernet header of the reflected frame.
fn vxlan_template(frame: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> OuterTemplate {
    let mac = |at: usize| MacAddr(frame[at..at + 6].try_into().expect("6 bytes"));
    let (peer, me) = (mac(6), mac(0));
    let tunnel = Tunnel {
        src_mac: me,
        dst_mac: peer,
        src: from,
        dst: to,
        port: vxlan::DEFAULT_PORT,
        vni: 4096,
    };
    OuterTemplate::new(&tunnel, me, peer)
}

/// Puts the frame at `buf[off..off + len]` in VXLAN with meshgate's own
/// `encapsulate` and returns where the VXLAN frame starts (`None`: too
/// short, or no room in front).
fn encapsulate(buf: &mut [u8], off: usize, len: usize, tmpl: &OuterTemplate) -> Option<usize> {
    let f = buf.get(off..off + len)?.get(..38)?;
    // The entropy from the inner addresses and ports (meshgate's flows
    // carry a hash of their key).
    let w = |i: usize| u32::from_ne_bytes([f[i], f[i + 1], f[i + 2], f[i + 3]]);
    let hash = (w(26) ^ w(30) ^ w(34)).wrapping_mul(0x9e37_79b1) >> 16;
    let start = off.checked_sub(VXLAN_OUTER)?;
    let out = buf
        .get_mut(start..)?
        .first_chunk_mut::<OUTER_TEMPLATE_LEN>()?;
    meshgate::dataplane::pipeline::encapsulate(out, tmpl, hash, len);
    Some(start)
}

fn reflect(
    iface: &str,
    addr: Ipv4Addr,
    duration: Option<f64>,
    interrupt: bool,
    encap_to: Option<Ipv4Addr>,
) -> Result<u64> {
    let stop = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    let mut rtnl = Rtnl::new()?;
    let link = rtnl.link(iface)?;
    let prog = CaptureProgram::load(Some(addr), None, 1, meshgate::xdp::bpf::action::PASS)?;
    let mut xsk = Xsk::open(&XskConfig {
        ifname: iface.into(),
        queues: vec![0],
        frames_per_queue: 4096,
        frame_size: 2048,
        ring_size: 2048,
        mode: BindMode::Auto,
        huge_pages: true,
    })?;
    prog.register_socket(0, xsk.ports[0].raw_fd())?;
    let _link = prog.attach(link.index, xdp_flags::DRV_MODE, iface)?;
    let umem = xsk.umem.clone();
    let port = &mut xsk.ports[0];
    let mut free = std::mem::take(&mut xsk.initial[0]);
    port.fill(&mut free);
    let start = Instant::now();
    let mut rx = Vec::with_capacity(64);
    let mut done = Vec::with_capacity(256);
    let mut reflected = 0u64;
    let mut template: Option<OuterTemplate> = None;
    // The same loop shape and batch size as meshgate's workers.
    while !stop.load(Ordering::Relaxed)
        && duration.is_none_or(|d| start.elapsed().as_secs_f64() < d)
    {
        port.complete(&mut done, 256);
        for mut t in done.drain(..) {
            umem.reset(&mut t);
            free.push(t);
        }
        port.fill(&mut free);
        let n = port.recv(&mut rx, 64);
        for t in rx.iter_mut() {
            let len = t.len() as usize;
            let (chunk, off) = umem.frame(t);
            let f = &mut chunk[off..off + len];
            if f.len() < 34 {
                continue;
            }
            if let Some(to) = encap_to {
                // The template's inner Ethernet header replaces the
                // frame's, as meshgate's does.
                let tmpl = template.get_or_insert_with(|| vxlan_template(f, addr, to));
                if let Some(start) = encapsulate(chunk, off, len, tmpl) {
                    umem.set_data(t, start, len + VXLAN_OUTER);
                }
                continue;
            }
            let mut macs = [0u8; 12];
            macs.copy_from_slice(&f[..12]);
            f[..6].copy_from_slice(&macs[6..12]);
            f[6..12].copy_from_slice(&macs[..6]);
        }
        reflected += n as u64;
        port.transmit(&mut rx);
        free.append(&mut rx);
        port.kick();
        if n == 0 && interrupt {
            let mut fds = [nix::poll::PollFd::new(
                port.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
        }
    }
    Ok(reflected)
}

/// `datagrams`: the count sent.
fn datagrams(to: std::net::SocketAddrV4, duration: f64, hex: &[String], junk: bool) -> Result<u64> {
    let mut payloads = hex
        .iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(h.get(i..i + 2).unwrap_or("x"), 16))
                .collect::<Result<Vec<u8>, _>>()
                .with_context(|| format!("--hex {h}: not hex"))
        })
        .collect::<Result<Vec<_>>>()?;
    if payloads.is_empty() && !junk {
        bail!("nothing to send: give --hex or --junk");
    }
    let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("a UDP socket")?;
    let end = Instant::now() + Duration::from_secs_f64(duration);
    let (mut sent, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
    let mut noise = vec![0u8; 1400];
    while Instant::now() < end {
        for _ in 0..256 {
            if junk {
                // xorshift: random enough to be no format at all.
                for b in noise.iter_mut() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
                let n = 1 + (x as usize % noise.len());
                payloads.push(noise[..n].to_vec());
            }
            for p in &payloads {
                // A full socket buffer is the point of a flood: go on.
                if sock.send_to(p, to).is_ok() {
                    sent += 1;
                }
            }
            if junk {
                payloads.pop();
            }
        }
    }
    Ok(sent)
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Datagrams {
            to,
            duration,
            hex,
            junk,
        } => {
            println!("{}", datagrams(to, duration, &hex, junk)?);
            Ok(())
        }
        Cmd::Send {
            iface,
            src,
            dst,
            dst_mac,
            src6,
            dst6,
            port,
            proto,
            flows,
            size,
            rate,
            duration,
            count,
            cpu,
            ports_per_addr,
            first_flow,
            handshakes,
            no_capture,
            sleep,
            json,
        } => {
            if handshakes && !matches!(proto, ProtoArg::TcpSyn) {
                anyhow::bail!("--handshakes needs --proto tcp-syn");
            }
            pin(cpu);
            let proto = match proto {
                ProtoArg::Udp => Proto::Udp,
                ProtoArg::TcpSyn => Proto::TcpSyn,
            };
            let r = send(
                &iface,
                src,
                dst,
                dst_mac,
                port,
                proto,
                flows,
                size,
                rate,
                duration,
                count,
                sleep,
                (ports_per_addr, first_flow, handshakes),
                no_capture,
                src6.zip(dst6),
            )
            .context("meshgate-pktgen send")?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "{:>12} {:>12} {:>10} {:>8} {:>12} {:>12} {:>8} {:>9} {:>9} {:>9}",
                    "sent",
                    "received",
                    "lost",
                    "loss%",
                    "tx pps",
                    "rx pps",
                    "Gbit/s",
                    "p50 us",
                    "p99 us",
                    "p99.9 us"
                );
                println!(
                    "{:>12} {:>12} {:>10} {:>8.3} {:>12.0} {:>12.0} {:>8.3} {:>9.1} {:>9.1} {:>9.1}",
                    r.sent,
                    r.received,
                    r.lost,
                    r.loss * 100.0,
                    r.tx_pps,
                    r.rx_pps,
                    r.rx_gbps,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us
                );
            }
            Ok(())
        }
        Cmd::Reflect {
            iface,
            addr,
            cpu,
            duration,
            interrupt,
            encap_to,
        } => {
            pin(cpu);
            let n = reflect(&iface, addr, duration, interrupt, encap_to)?;
            println!("reflected {n} frames");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encapsulating_reflector_sends_what_the_generator_reads_as_vxlan() {
        let set = FlowSet::new(
            MacAddr([2, 0, 0xc6, 0x12, 1, 1]),
            MacAddr([2, 0, 0xc6, 0x12, 1, 2]),
            "198.18.64.1".parse().unwrap(),
            "198.18.1.2".parse().unwrap(),
            8080,
            Proto::Udp,
            1000,
            64,
            50_000,
        )
        .unwrap();
        let mut buf = vec![0u8; 2048];
        let off = KERNEL_HEADROOM;
        let len = set.write(&mut buf[off..], 7, 1_000);
        let tmpl = vxlan_template(
            &buf[off..off + len],
            "198.18.1.2".parse().unwrap(),
            "198.18.1.1".parse().unwrap(),
        );
        let start = encapsulate(&mut buf, off, len, &tmpl).expect("room in front");
        assert_eq!(start, off - VXLAN_OUTER);
        let v = &buf[start..off + len];
        assert_eq!(v.len(), len + 50);
        assert_eq!(frames::latency_ns(v, 5_000), Some(4_000));
        let ip: &[u8; 20] = v[14..34].try_into().unwrap();
        assert_eq!(meshgate::wire::checksum::ipv4_header_sum(ip), 0xffff);
        assert_eq!(u16::from_be_bytes([v[16], v[17]]) as usize, len + 36);
        assert_eq!(u16::from_be_bytes([v[38], v[39]]) as usize, len + 16);
        assert!(u16::from_be_bytes([v[34], v[35]]) >= 49152);
        assert_eq!(&v[..6], &[2, 0, 0xc6, 0x12, 1, 1], "to the VTEP's next hop");
        // No room in front: the frame is left as it is.
        assert_eq!(encapsulate(&mut buf, 10, len, &tmpl), None);
    }
}
