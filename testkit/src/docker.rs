//! Docker Engine API answers recorded from real engines (trimmed to the
//! fields meshgate reads) and the swarm facts that go with them: the input
//! of the swarm and worker-view tests, the fuzz seeds and the fuzz target.
//!
//! meshgate's own unit tests include this file by path (under `cfg(test)`),
//! so it names everything through `meshgate::` paths.

use std::net::Ipv4Addr;

use meshgate::config::IngressConfig;
use meshgate::docker::swarm::SwarmFacts;
use meshgate::wire::MacAddr;

// Answers of a Docker 20.10.24 swarm (manager 198.18.0.2, worker
// 198.18.0.11, `docker service create --name web --publish 8080:80
// --replicas 3`), trimmed to the fields meshgate reads.
pub const SERVICES: &str = r#"[{"ID":"xv8ctzjgiu7fe980hoe7res7z","Spec":{"Name":"web"},"Endpoint":{"Spec":{"Mode":"vip","Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]},"Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}],"VirtualIPs":[{"NetworkID":"g61z0msna4i4bmd4g9zxacfou","Addr":"198.18.128.17/24"}]}}]"#;
pub const TASKS: &str = r#"[
{"ID":"outnfwdsy9aq13t8awutlwcv7","ServiceID":"xv8ctzjgiu7fe980hoe7res7z","NodeID":"rwqnic9oiedgcroolvzz3yz9g","DesiredState":"running","Status":{"State":"running"},"NetworksAttachments":[{"Network":{"ID":"g61z0msna4i4bmd4g9zxacfou","Spec":{"Name":"ingress","Ingress":true}},"Addresses":["198.18.128.19/24"]}]},
{"ID":"sxs73chqr4q3kzwqhcnhx9nw9","ServiceID":"xv8ctzjgiu7fe980hoe7res7z","NodeID":"rwqnic9oiedgcroolvzz3yz9g","DesiredState":"running","Status":{"State":"running"},"NetworksAttachments":[{"Network":{"ID":"g61z0msna4i4bmd4g9zxacfou","Spec":{"Name":"ingress","Ingress":true}},"Addresses":["198.18.128.18/24"]}]},
{"ID":"yg37k5f54vvl6roq9amkmdbux","ServiceID":"xv8ctzjgiu7fe980hoe7res7z","NodeID":"rwqnic9oiedgcroolvzz3yz9g","DesiredState":"running","Status":{"State":"running"},"NetworksAttachments":[{"Network":{"ID":"g61z0msna4i4bmd4g9zxacfou","Spec":{"Name":"ingress","Ingress":true}},"Addresses":["198.18.128.20/24"]}]}]"#;
pub const NODES: &str = r#"[
{"ID":"ieau4xomuc2kmaf95o8kef0pn","Spec":{"Role":"manager","Availability":"active"},"Status":{"State":"ready","Addr":"198.18.0.2"},"ManagerStatus":{"Leader":true,"Reachability":"reachable","Addr":"198.18.0.2:2377"}},
{"ID":"rwqnic9oiedgcroolvzz3yz9g","Spec":{"Role":"worker","Availability":"active"},"Status":{"State":"ready","Addr":"198.18.0.11"}}]"#;

pub fn facts() -> SwarmFacts {
    SwarmFacts {
        node_id: "ieau4xomuc2kmaf95o8kef0pn".into(),
        manager: true,
        node_address: Ipv4Addr::new(198, 18, 0, 2),
        data_path_port: 4789,
        ingress_network: "g61z0msna4i4bmd4g9zxacfou".into(),
        vni: 4096,
        subnet: "198.18.128.0/24".into(),
        sandbox_address: Ipv4Addr::new(198, 18, 128, 2),
        sandbox_mac: "02:42:c6:12:80:02".into(),
        mtu: None,
    }
}

pub fn ingress() -> IngressConfig {
    IngressConfig {
        vni: 4096,
        port: 4789,
        subnet: "198.18.128.0/24".parse().unwrap(),
        address: Ipv4Addr::new(198, 18, 128, 2),
        mac: MacAddr::docker(Ipv4Addr::new(198, 18, 128, 2)),
        mtu: 1450,
        sandbox: None,
        sandbox_required: false,
    }
}

pub const WORKER_INGRESS: &str = r#"{"Name":"ingress","Id":"qmg8j4ydpuhvb8z9ky7z80ip2","Scope":"swarm","Driver":"overlay","IPAM":{"Driver":"default","Options":null,"Config":[{"Subnet":"198.18.128.0/24","Gateway":"198.18.128.1"}]},"Ingress":true,"Containers":{"ingress-sbox":{"Name":"ingress-endpoint","EndpointID":"b365692612368e4a191266c542b6427787ff64577385463310f033f36742dd94","MacAddress":"02:42:c6:12:80:03","IPv4Address":"198.18.128.3/24","IPv6Address":""}},"Options":{"com.docker.network.driver.overlay.vxlanid_list":"4096"},"Peers":[{"Name":"5d3db19916da","IP":"198.18.0.2"},{"Name":"5ce8686dde42","IP":"198.18.0.11"}],"Services":{"":{"VIP":"<nil>","Ports":[],"LocalLBIndex":0,"Tasks":[{"Name":"ingress-endpoint","EndpointID":"b365692612368e4a191266c542b6427787ff64577385463310f033f36742dd94","EndpointIP":"198.18.128.3","Info":{"Host IP":"198.18.0.11"}},{"Name":"ingress-endpoint","EndpointID":"164a27b354e3b9301cf91ea02fb280482e92a0e42798f0c2c46e45fbf34e69f7","EndpointIP":"198.18.128.2","Info":{"Host IP":"198.18.0.2"}}]},"both":{"VIP":"198.18.128.10","Ports":["Target: 70, Publish: 7070","Target: 70, Publish: 7070"],"LocalLBIndex":257,"Tasks":[{"Name":"both.1.stakbsclu1kacdtewjo5tt74g","EndpointID":"1b0414552a2ccacb279894bee4c7d4f196dc38978b6db5bcde632d213fd72c9f","EndpointIP":"198.18.128.11","Info":{"Host IP":"198.18.0.2"}},{"Name":"both.2.8iu61c7jncjncqavw10sxg6vl","EndpointID":"6c581fa5b416f0d9409417ff594e6faf59f6f9fe5d2bb2af58c1cf42cc35b584","EndpointIP":"198.18.128.12","Info":{"Host IP":"198.18.0.2"}}]},"dns":{"VIP":"198.18.128.7","Ports":["Target: 53, Publish: 9053"],"LocalLBIndex":258,"Tasks":[{"Name":"dns.2.zm8zqwtzlej0qlq0ruj805enh","EndpointID":"a0691c737ba933daa19f7cee95f975ffdc654c1e1ef219d3508b686b5299f0ff","EndpointIP":"198.18.128.9","Info":{"Host IP":"198.18.0.2"}},{"Name":"dns.1.j0p1jbf9uwh2zytyz6zad3i5o","EndpointID":"d2b46869e0e07286288de5bac15ff66641d361d91a91c7191abf0c084810e9af","EndpointIP":"198.18.128.8","Info":{"Host IP":"198.18.0.2"}}]},"web":{"VIP":"198.18.128.4","Ports":["Target: 80, Publish: 8080"],"LocalLBIndex":256,"Tasks":[{"Name":"web.2.v09fpte3e8sdef53um76tbq0f","EndpointID":"891fa9e98148d684eaae0b16ede7cfe7c8371364f2a79eb16ef0e719c5820432","EndpointIP":"198.18.128.6","Info":{"Host IP":"198.18.0.2"}},{"Name":"web.1.sbtkhigjyfxl0tzfqi47pul7z","EndpointID":"8e92a621304614b47af0e037ea5fa416bf43ddd750c6d60e75fd04ac624ac325","EndpointIP":"198.18.128.5","Info":{"Host IP":"198.18.0.2"}}]}}}"#;

pub const MANAGER_SERVICES: &str = r#"[
{"ID":"a","Spec":{"Name":"web"},"Endpoint":{"Ports":[{"Protocol":"tcp","TargetPort":80,"PublishedPort":8080,"PublishMode":"ingress"}]}},
{"ID":"b","Spec":{"Name":"dns"},"Endpoint":{"Ports":[{"Protocol":"udp","TargetPort":53,"PublishedPort":9053,"PublishMode":"ingress"}]}},
{"ID":"c","Spec":{"Name":"both"},"Endpoint":{"Ports":[{"Protocol":"tcp","TargetPort":70,"PublishedPort":7070,"PublishMode":"ingress"},{"Protocol":"udp","TargetPort":70,"PublishedPort":7070,"PublishMode":"ingress"}]}}]"#;

/// Docker's rules for the same services, in the shape of moby's
/// `programIngress` (`iptables -t nat -S DOCKER-INGRESS`).
pub const RULES: &str = "-N DOCKER-INGRESS
-A DOCKER-INGRESS -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.18.0.2:8080
-A DOCKER-INGRESS -p udp -m udp --dport 9053 -j DNAT --to-destination 172.18.0.2:9053
-A DOCKER-INGRESS -p tcp -m tcp --dport 7070 -j DNAT --to-destination 172.18.0.2:7070
-A DOCKER-INGRESS -p udp -m udp --dport 7070 -j DNAT --to-destination 172.18.0.2:7070
-A DOCKER-INGRESS -j RETURN
";
