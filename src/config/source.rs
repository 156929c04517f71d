//! Where a running meshgate's configuration comes from: the command line
//! (`--config`, `--swarm`, `--interface`) merged with the file into one
//! text, which the configuration's validation then reads like any file.

use std::path::PathBuf;

use super::{Config, ConfigError, DEFAULT_DOCKER_SOCKET, Discover};

/// Where a running meshgate's configuration comes from: `run --config
/// FILE`, `run --swarm [SOCKET]`, or both. Reloading loads it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigSource {
    pub file: Option<PathBuf>,
    /// `--swarm SOCKET`: services from Docker Swarm.
    pub swarm: Option<String>,
    /// `--interface`: the ingress NIC when there is no file.
    pub interface: Option<String>,
    /// `--metrics ADDR:PORT`: the HTTP listener (status page, `/metrics`),
    /// over the file's `control.metrics`.
    pub metrics: Option<std::net::SocketAddr>,
}

impl ConfigSource {
    /// Reads and validates the configuration; with a swarm, asks
    /// `discover` (`meshgate::docker::discover`) for this node's facts.
    pub fn load_with(&self, discover: Discover) -> Result<Config, ConfigError> {
        let (text, name) = match &self.file {
            Some(path) => {
                let name = path.display().to_string();
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::new(&name, "(file)", format!("cannot read: {e}")))?;
                (Some(text), name)
            }
            None => (None, "--swarm".to_string()),
        };
        let text_of_file = text.clone();
        let text = match &self.swarm {
            None => text.ok_or_else(|| {
                ConfigError::new(
                    &name,
                    "(command line)",
                    "give --config FILE, or --swarm to read services from Docker Swarm",
                )
            })?,
            Some(socket) => swarm_text(text.as_deref(), socket, self.interface.as_deref())
                .map_err(|m| ConfigError::new(&name, "swarm.socket", m))?,
        };
        // `--swarm SOCKET` over a file's own [swarm] table: the flag wins,
        // as flags do; the file's text stays as it is (its line numbers in
        // errors), and Docker is asked at the flag's socket.
        let over = match &self.swarm {
            Some(socket) if overrides_file_socket(text_of_file.as_deref(), socket) => Some(
                super::parse_socket(socket).map_err(|m| ConfigError::new("--swarm", socket, m))?,
            ),
            _ => None,
        };
        let mut redirected = |p: &std::path::Path| match &over {
            Some(o) => discover(o),
            None => discover(p),
        };
        let discover: Discover = &mut redirected;
        let mut cfg = Config::parse_with(&text, &name, discover).map_err(|mut e| {
            // A socket given on the command line is named as given there,
            // not as the file key it was turned into.
            if let (Some(socket), "swarm.socket") = (&self.swarm, e.key.as_str()) {
                if over.is_some()
                    || !matches!(file_swarm_socket(text_of_file.as_deref()), Some(Some(_)))
                {
                    e.file = "--swarm".into();
                    e.key = socket.clone();
                }
            }
            e
        })?;
        if let (Some(o), Some(sw)) = (over, cfg.swarm.as_mut()) {
            sw.socket = o;
        }
        if self.metrics.is_some() {
            cfg.control.metrics = self.metrics;
        }
        Ok(cfg)
    }
}

/// The file's `[swarm]` table as far as its socket goes: `None` without
/// a table (or a file that does not parse: its real parse reports it),
/// else the table's `socket`, if it names one.
fn file_swarm_socket(file: Option<&str>) -> Option<Option<String>> {
    let table = toml::from_str::<toml::Table>(file?).ok()?;
    let sw = table.get("swarm")?;
    Some(
        sw.get("socket")
            .and_then(|v| v.as_str())
            .map(str::to_string),
    )
}

/// The configuration text of `run --swarm SOCKET`: the file's text with a
/// `[swarm]` table appended when it has none (appended, so that errors
/// keep the file's line numbers), or a minimal text naming `interface`.
pub fn swarm_text(
    file: Option<&str>,
    socket: &str,
    interface: Option<&str>,
) -> Result<String, String> {
    let Some(text) = file else {
        let iface = interface.ok_or(
            "--swarm without --config needs --interface (the ingress NIC that holds this node's swarm address)",
        )?;
        return Ok(format!(
            "[node]\ninterface = {}\n\n[swarm]\nsocket = {}\n",
            toml_string(iface),
            toml_string(socket)
        ));
    };
    if interface.is_some() {
        return Err(
            "--interface goes with --swarm alone; with --config, set node.interface in the file"
                .into(),
        );
    }
    // A syntax error is reported by the real parse, with its line.
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(_) => return Ok(text.to_string()),
    };
    if table.contains_key("swarm") {
        // The file's own table, its socket unless the flag names another
        // one, which `load_with` then uses (`overrides_file_socket`).
        Ok(text.to_string())
    } else {
        Ok(format!(
            "{text}\n\n[swarm]\nsocket = {}\n",
            toml_string(socket)
        ))
    }
}

/// True when `--swarm SOCKET` names another socket than the file's own
/// `[swarm]` table does (its `socket`, or Docker's default without one):
/// the flag wins. `--swarm` without a socket (the default) leaves the
/// file's.
fn overrides_file_socket(file: Option<&str>, socket: &str) -> bool {
    let Some(file_socket) = file_swarm_socket(file) else {
        return false;
    };
    let default = format!("unix://{}", DEFAULT_DOCKER_SOCKET);
    let same =
        |a: &str, b: &str| a.trim_start_matches("unix://") == b.trim_start_matches("unix://");
    !same(socket, &default) && !same(socket, file_socket.as_deref().unwrap_or(&default))
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, PollMode, SwarmFacts};
    use std::net::Ipv4Addr;
    use std::path::Path;

    fn facts() -> SwarmFacts {
        SwarmFacts {
            manager: true,
            node_id: "n1".into(),
            node_address: Ipv4Addr::new(198, 18, 0, 2),
            data_path_port: 4789,
            ingress_network: "i".into(),
            vni: 4096,
            subnet: "198.18.128.0/24".into(),
            sandbox_address: Ipv4Addr::new(198, 18, 128, 2),
            sandbox_mac: "02:42:c6:12:80:02".into(),
            mtu: None,
        }
    }

    fn load(src: &ConfigSource) -> Result<(Config, Vec<PathBuf>), ConfigError> {
        let mut asked = Vec::new();
        let c = src.load_with(&mut |p: &Path| {
            asked.push(p.to_path_buf());
            Ok(facts())
        })?;
        Ok((c, asked))
    }

    #[test]
    fn swarm_alone_needs_an_interface() {
        let src = ConfigSource {
            swarm: Some("unix:///run/d.sock".into()),
            interface: Some("eth0".into()),
            ..Default::default()
        };
        let (c, asked) = load(&src).unwrap();
        assert_eq!(c.node.interface, "eth0");
        assert_eq!(asked, [PathBuf::from("/run/d.sock")]);
        let e = load(&ConfigSource {
            interface: None,
            ..src.clone()
        })
        .unwrap_err();
        assert!(e.message.contains("needs --interface"), "{e}");
        let e = load(&ConfigSource::default()).unwrap_err();
        assert!(e.message.contains("--config FILE, or --swarm"), "{e}");
        // --metrics: the status page and /metrics without a file.
        let (c, _) = load(&ConfigSource {
            metrics: Some(([127, 0, 0, 1], 9464).into()),
            ..src
        })
        .unwrap();
        assert_eq!(c.control.metrics, Some(([127, 0, 0, 1], 9464).into()));
    }

    #[test]
    fn swarm_and_a_file() {
        let dir = std::env::temp_dir().join(format!("meshgate-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("m.toml");
        let src = |text: &str, socket: &str| {
            std::fs::write(&file, text).unwrap();
            load(&ConfigSource {
                file: Some(file.clone()),
                swarm: Some(socket.into()),
                ..Default::default()
            })
        };
        let node = "[node]\ninterface = \"in0\"\npoll = \"busy\"\n";
        // The file's settings stay; [swarm] comes from the command line.
        let (c, asked) = src(node, "/run/x.sock").unwrap();
        assert_eq!(c.node.poll, PollMode::Busy);
        assert_eq!(asked, [PathBuf::from("/run/x.sock")]);
        // The file's [swarm] with the default --swarm: the file's socket.
        let with = format!("{node}[swarm]\nsocket = \"/run/y.sock\"\n");
        let (_, asked) = src(&with, "unix:///var/run/docker.sock").unwrap();
        assert_eq!(asked, [PathBuf::from("/run/y.sock")]);
        assert!(src(&with, "/run/y.sock").is_ok());
        // Another socket on the command line wins over the file's, as
        // flags do, with or without a socket in the file's [swarm].
        let (c, asked) = src(&with, "/run/z.sock").unwrap();
        assert_eq!(asked, [PathBuf::from("/run/z.sock")]);
        assert_eq!(c.swarm.unwrap().socket, PathBuf::from("/run/z.sock"));
        let (c, asked) = src(
            &format!("{node}[swarm]\nresync = 3.0\n"),
            "unix:///run/z.sock",
        )
        .unwrap();
        assert_eq!(asked, [PathBuf::from("/run/z.sock")]);
        let sw = c.swarm.unwrap();
        assert_eq!(
            (sw.socket, sw.resync.as_secs()),
            (PathBuf::from("/run/z.sock"), 3)
        );
        let e = src(&with, "tcp://host:2375").unwrap_err();
        assert!(e.message.contains("not a Unix socket"), "{e}");
        // Errors in the file keep its line numbers.
        let e = src(&format!("{node}bogus = 1\n"), "/run/x.sock").unwrap_err();
        assert_eq!(e.key, "line 4", "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
