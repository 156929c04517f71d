//! Writes the seed corpus of every fuzz target from the fixture frames
//! (`testkit/src/fixtures.rs`) and the shipped configuration:
//! `cargo run --example make_seeds` in fuzz/.

use meshgate_testkit::fixtures::*;
use std::path::Path;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new("corpus").join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let cases = cases();
    for (i, c) in cases.iter().enumerate() {
        let f = &c.input;
        let name = format!("case{i:02}");
        write("pipeline", &name, f);
        write("wire_ethernet", &name, f);
        if f.len() > 14 {
            let ip = &f[14..];
            write("wire_ipv4", &name, ip);
            write("wire_arp", &name, ip);
            if ip.len() > 20 {
                let l4 = &ip[20..];
                match ip[9] {
                    6 => write("wire_tcp", &name, l4),
                    17 => write("wire_udp", &name, l4),
                    1 => write("wire_icmp", &name, l4),
                    _ => {}
                }
                if ip[9] == 17 && l4.len() > 8 {
                    write("wire_vxlan", &name, &l4[8..]);
                    // The inner packet of a VXLAN frame.
                    if l4.len() > 16 + 14 + 20 && l4[16 + 12..16 + 14] == [0x08, 0x00] {
                        let inner = &l4[16 + 14..];
                        let iname = format!("{name}-inner");
                        write("wire_ipv4", &iname, inner);
                        match inner[9] {
                            6 => write("wire_tcp", &iname, &inner[20..]),
                            17 => write("wire_udp", &iname, &inner[20..]),
                            1 => write("wire_icmp", &iname, &inner[20..]),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    // Several frames in one input, separated as the pipeline target splits.
    let mut multi = Vec::new();
    for c in cases.iter().take(6) {
        multi.extend_from_slice(&c.input);
        multi.push(0xa5);
    }
    write("pipeline", "multi", &multi);
    write("config", "lab", include_bytes!("../examples/lab.toml"));
    {
        use meshgate_testkit::docker::{NODES, SERVICES, TASKS};
        let mut answers = Vec::new();
        answers.extend_from_slice(SERVICES.as_bytes());
        answers.push(0xff);
        answers.extend_from_slice(TASKS.as_bytes());
        answers.push(0xff);
        answers.extend_from_slice(NODES.as_bytes());
        write("docker_api", "answers", &answers);
        use meshgate_testkit::docker::{MANAGER_SERVICES, RULES, WORKER_INGRESS};
        for (name, protocols) in [
            ("worker_manager", MANAGER_SERVICES),
            ("worker_rules", RULES),
        ] {
            let mut v = WORKER_INGRESS.as_bytes().to_vec();
            v.push(0xff);
            v.extend_from_slice(protocols.as_bytes());
            write("docker_api", name, &v);
        }
        write(
            "docker_api",
            "chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n[1,2\r\n0\r\n\r\n",
        );
        write(
            "docker_api",
            "length",
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}",
        );
    }
    {
        use meshgate::wire::{icmpv6, ipv6};
        let (s, d): (std::net::Ipv6Addr, std::net::Ipv6Addr) =
            ("2001:2::1".parse().unwrap(), "2001:2::2".parse().unwrap());
        let mut msg = vec![0u8; 12];
        msg[8..].copy_from_slice(b"ping");
        icmpv6::Repr::EchoRequest { ident: 1, seq: 1 }.emit(
            &mut icmpv6::Packet::new_unchecked(&mut msg[..]),
            s,
            d,
        );
        write("wire_icmpv6", "echo", &msg);
        let mut too_big = vec![0u8; 48];
        icmpv6::Repr::PacketTooBig { mtu: 1450 }.emit(
            &mut icmpv6::Packet::new_unchecked(&mut too_big[..]),
            s,
            d,
        );
        write("wire_icmpv6", "too_big", &too_big);
        let mut pkt = vec![0u8; ipv6::HEADER_LEN + msg.len()];
        ipv6::Repr {
            src: s,
            dst: d,
            next_header: ipv6::next_header::ICMPV6,
            payload_len: msg.len() as u16,
            hop_limit: 64,
            traffic_class: 0,
            flow_label: 0,
        }
        .emit(&mut ipv6::Packet::new_unchecked(&mut pkt[..]));
        pkt[ipv6::HEADER_LEN..].copy_from_slice(&msg);
        write("wire_ipv6", "echo", &pkt);
        pkt[6] = ipv6::next_header::FRAGMENT;
        write("wire_ipv6", "fragment", &pkt);
    }
    {
        use meshgate::dataplane::flow::FlowState;
        use meshgate::dataplane::handover::{FlowRecord, Origin, encode};
        let origin = Origin {
            worker: 0,
            workers: 1,
            snat_ports: (1024, 65535),
        };
        let r = FlowRecord {
            protocol: 6,
            state: FlowState::Established,
            preserve: false,
            client: "198.18.0.1".parse().unwrap(),
            client_port: 40000,
            published: 8080,
            task: "198.18.128.4".parse().unwrap(),
            vtep: "198.18.0.11".parse().unwrap(),
            target: 80,
            snat_port: 40000,
            idle_ms: 250,
            client_next: 1,
            task_next: 2,
            hash: 3,
            client6: None,
        };
        write("handover", "empty", &encode(origin, &[]));
        write("handover", "one", &encode(origin, &[r]));
        // A journal of three slots: one flow, one free, one torn.
        use meshgate::dataplane::handover::{encode_header, encode_record};
        use meshgate::dataplane::journal::{JOURNAL_MAGIC, LIVE};
        let mut j = encode_header(JOURNAL_MAGIC, origin, 3, 0).to_vec();
        let mut slot = encode_record(&r);
        slot[3] = LIVE;
        j.extend_from_slice(&slot);
        j.extend_from_slice(&[0; meshgate::dataplane::handover::RECORD_LEN]);
        slot[3] = 0;
        j.extend_from_slice(&slot);
        write("journal", "three", &j);
    }
    {
        // Two signed sets of a node, each datagram behind its length.
        use meshgate::announce::{Content, Keys, ReturnPaths, Sender};
        let keys = Keys::parse(b"fuzzing key, sixteen bytes or more").unwrap();
        let mut s = Sender::with_epoch("198.18.0.11".parse().unwrap(), 1);
        let rp = ReturnPaths {
            tasks: ["198.18.128.4".parse().unwrap()].into_iter().collect(),
            sandboxes: ["198.18.128.2".parse().unwrap()].into_iter().collect(),
            asks: ["198.18.128.4".parse().unwrap()].into_iter().collect(),
            own_sandbox: Some((
                "198.18.128.2".parse().unwrap(),
                meshgate::wire::MacAddr([2, 0x42, 198, 18, 128, 2]),
            )),
        };
        let mut seq = Vec::new();
        for d in s
            .encode(&keys, &Content::ReturnPaths(rp))
            .into_iter()
            .chain(s.encode(&keys, &Content::Services(vec![])))
        {
            seq.extend_from_slice(&u16::try_from(d.len()).unwrap().to_be_bytes());
            seq.extend_from_slice(&d);
        }
        write("announce", "two_sets", &seq);
    }
    for (i, r) in [
        r#"{"cmd":"services"}"#,
        r#"{"cmd":"tasks","service":"web"}"#,
        r#"{"cmd":"update","service":"web","task_add":[{"address":"198.18.128.7","node":"198.18.0.11"}],"weight":[["198.18.128.4",0]]}"#,
        r#"{"cmd":"create","service":{"name":"api","publish":[{"published":9090,"target":80,"protocol":"udp"}]}}"#,
    ]
    .iter()
    .enumerate()
    {
        write("api_request", &format!("req{i}"), r.as_bytes());
    }
}
