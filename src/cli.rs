//! Client subcommands: talk to a running meshgate over its control socket
//! and print what it says in the shapes people know (`docker service ls`,
//! `docker service ps`, `ipvsadm -ln`).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use meshgate::api::{IpvsService, PortView, Request, ServiceView, TaskView, call, call_as};
use meshgate::config::{
    ClientIp, OutlierDetection, Protocol, PublishSpec, Scheduler, ServiceSpec, TaskSpec,
};
use meshgate::runtime::serve::stats::StatsView;
use meshgate::runtime::serve::status::StatusView;

/// Prints rows as aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if i + 1 == r.len() {
                    s.clone()
                } else {
                    format!("{s:<w$}", w = widths[i])
                }
            })
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn ports(ports: &[PortView]) -> String {
    ports
        .iter()
        .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn service_ls(sock: &Path) -> Result<()> {
    let services: Vec<ServiceView> = call_as(sock, &Request::Services {})?;
    let mut rows = vec![vec![
        "NAME".into(),
        "MARK".into(),
        "SCHEDULER".into(),
        "CLIENT IP".into(),
        "TASKS".into(),
        "PORTS".into(),
    ]];
    for svc in services {
        rows.push(vec![
            svc.name,
            format!("{:#x}", svc.mark),
            svc.scheduler,
            svc.client_ip,
            format!("{}/{}", svc.tasks_up, svc.tasks_total),
            ports(&svc.publish),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

pub fn service_ps(sock: &Path, name: &str) -> Result<()> {
    let tasks: Vec<TaskView> = call_as(
        sock,
        &Request::Tasks {
            service: name.into(),
        },
    )?;
    let mut rows = vec![
        [
            "TASK",
            "NODE",
            "MAC",
            "WEIGHT",
            "STATE",
            "CLIENT IP",
            "ACTIVE",
            "INACTIVE",
            "FLOWS",
            "EJECTIONS",
            "PKTS IN",
            "PKTS OUT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for t in tasks {
        rows.push(vec![
            t.address.to_string(),
            t.node.to_string(),
            t.mac,
            t.weight.to_string(),
            if t.ejected_for_ms > 0 {
                format!(
                    "{} ({:.0} s left)",
                    t.state,
                    f64::from(t.ejected_for_ms) / 1e3
                )
            } else {
                t.state
            },
            t.client_ip,
            t.active_flows.to_string(),
            t.inactive_flows.to_string(),
            t.flows.to_string(),
            t.ejections.to_string(),
            t.counters.packets_in.to_string(),
            t.counters.packets_out.to_string(),
        ]);
    }
    print!("{}", table(&rows));
    Ok(())
}

pub fn ipvs(sock: &Path) -> Result<()> {
    let services: Vec<IpvsService> = call_as(sock, &Request::Ipvs {})?;
    println!(
        "meshgate {} (IPVS-compatible view)",
        env!("CARGO_PKG_VERSION")
    );
    println!("Prot LocalAddress:Port Scheduler Flags");
    println!("  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn");
    for svc in services {
        // ipvsadm's flags column: the one meshgate has that IPVS has not.
        let flags = if svc.client_ip == "preserve" {
            " client-ip=preserve"
        } else {
            ""
        };
        println!("FWM  {} {}{flags}", svc.fwmark, svc.scheduler);
        for r in svc.reals {
            let addr = format!("{}:{}", r.address, r.port);
            println!(
                "  -> {addr:<28} Masq    {:<6} {:<10} {}",
                r.weight, r.active, r.inactive
            );
        }
    }
    Ok(())
}

fn print_stats(v: &StatsView) {
    println!(
        "uptime {:.1}s  generation {}  flows {}  drops {}",
        v.uptime_seconds, v.generation, v.flows, v.drops_total
    );
    let e = &v.events;
    println!(
        "rx {}  tx {}  forwarded {}  replies {}  arp {}  resets {}  handoffs {}  flows +{} -{} expired -{} evicted",
        e.rx,
        e.tx,
        e.forwarded,
        e.replies,
        e.arp_replies,
        e.resets_sent,
        e.handoffs,
        e.flows_created,
        e.flows_expired,
        e.flows_evicted
    );
    if e.sandbox_rx + e.sandbox_tx > 0 {
        println!(
            "tasks on this node (through the ingress sandbox): sent {}  received {}",
            e.sandbox_tx, e.sandbox_rx
        );
    }
    print!("{}", table(&task_rows(v)));
    println!("drops by reason: {}", drop_list(v));
    let a = &v.syn_admission;
    println!(
        "new TCP flows: budget {}/s per queue, admitted {}, retried {}, refused {}",
        a.budget_per_queue_per_second, a.admitted, a.retried, a.refused
    );
    let t = &v.takeover;
    if t.takeovers > 0 || t.flows_carried + t.flows_left_out > 0 {
        println!(
            "takeovers: {}, flows carried over {} ({} left out){}",
            t.takeovers,
            t.flows_carried,
            t.flows_left_out,
            match (t.switch_ms, t.switch_dropped) {
                (Some(ms), Some(d)) => format!(", last switch {ms:.1} ms, {d} frame(s) dropped"),
                _ => String::new(),
            }
        );
    }
    let b = &v.batch_latency_ns;
    println!(
        "batch latency: p50 {} ns  p99 {} ns  p99.9 {} ns  max {} ns  ({} batches)",
        b.p50, b.p99, b.p999, b.max, b.count
    );
}

/// The per-task table of `meshgate stats`: a header and a row a task.
fn task_rows(v: &StatsView) -> Vec<Vec<String>> {
    let mut rows = vec![
        [
            "SERVICE",
            "TASK",
            "PKTS IN",
            "BYTES IN",
            "PKTS OUT",
            "BYTES OUT",
            "FLOWS",
            "ACTIVE",
            "INACTIVE",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for svc in &v.services {
        for t in &svc.tasks {
            let c = &t.counters;
            rows.push(vec![
                svc.name.clone(),
                t.address.to_string(),
                c.packets_in.to_string(),
                c.bytes_in.to_string(),
                c.packets_out.to_string(),
                c.bytes_out.to_string(),
                t.flows.to_string(),
                t.active_flows.to_string(),
                t.inactive_flows.to_string(),
            ]);
        }
    }
    rows
}

/// The drop reasons that counted something, or "none".
fn drop_list(v: &StatsView) -> String {
    let drops: Vec<String> = v
        .drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if drops.is_empty() {
        "none".to_string()
    } else {
        drops.join(", ")
    }
}

pub fn stats(sock: &Path, json: bool, watch: bool) -> Result<()> {
    use std::io::IsTerminal;
    // Clearing the screen only makes sense on a terminal; into a pipe or a
    // file, snapshots follow each other, separated by a blank line.
    let clear = watch && std::io::stdout().is_terminal();
    let mut first = true;
    loop {
        let v: StatsView = call_as(sock, &Request::Stats {})?;
        if clear {
            print!("\x1b[2J\x1b[H");
        } else if watch && !first {
            println!();
        }
        first = false;
        if json {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            print_stats(&v);
        }
        if !watch {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

pub fn status(sock: &Path) -> Result<()> {
    let v: StatusView = call_as(sock, &Request::Status {})?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

pub fn reload(sock: &Path) -> Result<()> {
    let v = call(sock, &Request::Reload {})?;
    println!("reloaded: {}", s(&v));
    Ok(())
}

/// `IP@NODE[,mac=M][,weight=W]`
pub fn parse_task(t: &str) -> Result<TaskSpec> {
    let mut parts = t.split(',');
    let head = parts.next().unwrap_or_default();
    let (address, node) = head.split_once('@').with_context(|| {
        format!("`{t}`: a task is ADDRESS@NODE[,mac=MAC][,weight=W], like 198.18.128.7@198.18.0.11")
    })?;
    let mut spec = TaskSpec {
        address: address.into(),
        node: node.into(),
        mac: None,
        weight: None,
    };
    for p in parts {
        match p.split_once('=') {
            Some(("mac", m)) => spec.mac = Some(m.into()),
            Some(("weight", w)) => {
                spec.weight = Some(
                    w.parse()
                        .with_context(|| format!("`{w}` is not a weight"))?,
                )
            }
            _ => bail!("`{p}` in `{t}`: expected mac=MAC or weight=W"),
        }
    }
    Ok(spec)
}

/// Docker's short form: `PUBLISHED:TARGET[/PROTOCOL]` (or `PUBLISHED[/PROTOCOL]` to remove).
pub fn parse_publish(p: &str, need_target: bool) -> Result<PublishSpec> {
    let (ports, proto) = match p.split_once('/') {
        Some((a, "tcp")) => (a, Protocol::Tcp),
        Some((a, "udp")) => (a, Protocol::Udp),
        Some((_, o)) => bail!("`{o}` in `{p}`: the protocol is tcp or udp"),
        None => (p, Protocol::Tcp),
    };
    let (published, target) = match ports.split_once(':') {
        Some((a, b)) => (a, b),
        None if !need_target => (ports, "1"),
        None => bail!("`{p}`: a published port is PUBLISHED:TARGET[/tcp|/udp], like 8080:80"),
    };
    let num = |x: &str| {
        x.parse::<i64>()
            .with_context(|| format!("`{x}` in `{p}` is not a port"))
    };
    Ok(PublishSpec {
        published: num(published)?,
        target: num(target)?,
        protocol: proto,
    })
}

pub struct UpdateArgs {
    pub task_add: Vec<String>,
    pub task_rm: Vec<String>,
    pub weight: Vec<String>,
    pub publish_add: Vec<String>,
    pub publish_rm: Vec<String>,
    pub scheduler: Option<Scheduler>,
}

pub fn service_update(sock: &Path, name: &str, a: UpdateArgs) -> Result<()> {
    let task_add = a
        .task_add
        .iter()
        .map(|t| parse_task(t))
        .collect::<Result<Vec<_>>>()?;
    let task_rm = a
        .task_rm
        .iter()
        .map(|t| {
            t.parse()
                .with_context(|| format!("`{t}` is not an IPv4 address"))
        })
        .collect::<Result<Vec<_>>>()?;
    let weight = a
        .weight
        .iter()
        .map(|w| {
            let (ip, n) = w.split_once('=').with_context(|| {
                format!("`{w}`: a weight is ADDRESS=WEIGHT, like 198.18.128.4=0")
            })?;
            Ok((
                ip.parse()
                    .with_context(|| format!("`{ip}` is not an IPv4 address"))?,
                n.parse()
                    .with_context(|| format!("`{n}` is not a weight"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let publish_add = a
        .publish_add
        .iter()
        .map(|p| parse_publish(p, true))
        .collect::<Result<Vec<_>>>()?;
    let publish_rm = a
        .publish_rm
        .iter()
        .map(|p| parse_publish(p, false))
        .collect::<Result<Vec<_>>>()?;
    let v = call(
        sock,
        &Request::Update {
            service: name.into(),
            task_add,
            task_rm,
            weight,
            publish_add,
            publish_rm,
            scheduler: a.scheduler,
        },
    )?;
    println!("{name} updated: {}", s(&v));
    Ok(())
}

pub fn service_create(
    sock: &Path,
    name: &str,
    publish: &[String],
    tasks: &[String],
    scheduler: Scheduler,
    client_ip: ClientIp,
    outlier_detection: OutlierDetection,
) -> Result<()> {
    let spec = ServiceSpec {
        name: name.into(),
        scheduler,
        client_ip,
        outlier_detection,
        publish: publish
            .iter()
            .map(|p| parse_publish(p, true))
            .collect::<Result<Vec<_>>>()?,
        tasks: tasks
            .iter()
            .map(|t| parse_task(t))
            .collect::<Result<Vec<_>>>()?,
    };
    let v = call(sock, &Request::Create { service: spec })?;
    println!("{name} created: {}", s(&v));
    Ok(())
}

pub fn service_rm(sock: &Path, name: &str) -> Result<()> {
    let v = call(
        sock,
        &Request::Remove {
            service: name.into(),
        },
    )?;
    println!("{name} removed: {}", s(&v));
    Ok(())
}

/// The interface that holds this node's swarm address (`run --swarm`
/// without `--interface`): the NIC the other nodes' VXLAN arrives on.
pub fn swarm_interface(socket: &str) -> Result<String> {
    use meshgate::config::parse_socket;
    use meshgate::docker::engine::Docker;
    use meshgate::docker::swarm::discover;
    let path = parse_socket(socket).map_err(anyhow::Error::msg)?;
    let facts = discover(&Docker::new(&path))?;
    let addrs = nix::ifaddrs::getifaddrs().context("listing interface addresses")?;
    for a in addrs {
        let v4 = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        if v4 == Some(facts.node_address) {
            return Ok(a.interface_name);
        }
    }
    bail!(
        "no interface here holds the swarm's node address {} (docker info: NodeAddr); name the ingress NIC with --interface",
        facts.node_address
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_and_publish_syntax() {
        let t = parse_task("198.18.128.7@198.18.0.11,weight=3").unwrap();
        assert_eq!(
            (t.address.as_str(), t.node.as_str(), t.weight),
            ("198.18.128.7", "198.18.0.11", Some(3))
        );
        assert!(parse_task("198.18.128.7").is_err());
        assert!(parse_task("198.18.128.7@198.18.0.11,color=red").is_err());
        let p = parse_publish("8080:80/udp", true).unwrap();
        assert_eq!(
            (p.published, p.target, p.protocol),
            (8080, 80, Protocol::Udp)
        );
        assert_eq!(
            parse_publish("9090:90", true).unwrap().protocol,
            Protocol::Tcp
        );
        assert!(parse_publish("8080", true).is_err());
        assert!(parse_publish("8080/sctp", false).is_err());
        assert_eq!(parse_publish("8080/udp", false).unwrap().published, 8080);
    }

    #[test]
    fn table_aligns() {
        let t = table(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A     BB\nCCC   D\n");
    }
}
