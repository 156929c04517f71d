//! The control thread's answers to API requests: views of the tables in the
//! shapes of `docker service ls/ps` and `ipvsadm -ln`, statistics, and
//! validated changes of services and tasks.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use super::control::Control;
use super::serve::status::{StatusService, StatusTask, StatusView};
use super::worker::clock_ms;
use crate::api::{IpvsReal, IpvsService, PortView, Request, Response, ServiceView, TaskView};
use crate::config::{Config, MAX_WEIGHT, Publish, Service, Task, check_unique};
use crate::dataplane::tables::TaskEntry;

/// State of a task as `service ps` shows it.
/// A task's state as the views show it. An unresolved task (its node's
/// next-hop MAC is not known) gets no new flows: the word says so.
fn task_state(t: &TaskEntry, now: u32) -> &'static str {
    if !t.reachable() {
        "unresolved-skipped"
    } else if t.weight == 0 {
        "draining"
    } else if t.shared.health.ejected(now) {
        "ejected"
    } else {
        "running"
    }
}

impl Control {
    /// Answers one API request.
    pub fn handle(&mut self, req: Request) -> Response {
        match req {
            Request::Services {} => Response::of(&self.view_services()),
            Request::Tasks { service } => match self.view_tasks(&service) {
                Ok(v) => Response::of(&v),
                Err(e) => Response::err(e),
            },
            Request::Ipvs {} => Response::of(&self.view_ipvs()),
            Request::Stats {} => Response::of(&self.stats_view()),
            Request::Metrics {} => Response::ok(Value::String(self.metrics_text())),
            Request::Status {} => Response::of(&self.status_view()),
            Request::Reload {} => match self.reload() {
                Ok(m) => Response::ok(json!(m)),
                Err(e) => Response::err(format!("reload rejected, tables unchanged: {e}")),
            },
            Request::Update {
                service,
                task_add,
                task_rm,
                weight,
                publish_add,
                publish_rm,
                scheduler,
            } => {
                self.change(|cfg, ing, node| {
                    let svc = cfg.services.iter_mut().find(|s| s.name == service).ok_or_else(|| format!("no service named `{service}`"))?;
                    for a in &task_rm {
                        let before = svc.tasks.len();
                        svc.tasks.retain(|t| t.address != *a);
                        if svc.tasks.len() == before {
                            return Err(format!("service {service}: no task {a} to remove"));
                        }
                    }
                    for (i, t) in task_add.iter().enumerate() {
                        let task = Task::from_spec(t, ing, node).map_err(|(f, m)| format!("service {service}: task_add[{i}].{f}: {m}"))?;
                        if svc.tasks.iter().any(|o| o.address == task.address) {
                            return Err(format!("service {service}: task {} exists already", task.address));
                        }
                        svc.tasks.push(task);
                    }
                    for (a, w) in &weight {
                        if !(0..=MAX_WEIGHT as i64).contains(w) {
                            return Err(format!("service {service}: weight {w} of {a} is out of range (0 to {MAX_WEIGHT}; 0 drains the task)"));
                        }
                        let t = svc.tasks.iter_mut().find(|t| t.address == *a).ok_or_else(|| format!("service {service}: no task {a}"))?;
                        t.weight = *w as u32;
                    }
                    for p in &publish_rm {
                        let before = svc.publish.len();
                        svc.publish.retain(|x| !(i64::from(x.published) == p.published && x.protocol == p.protocol));
                        if svc.publish.len() == before {
                            return Err(format!("service {service}: {}/{} is not published", p.published, p.protocol));
                        }
                    }
                    for (i, p) in publish_add.iter().enumerate() {
                        let pb = Publish::from_spec(p, ing).map_err(|(f, m)| format!("service {service}: publish_add[{i}].{f}: {m}"))?;
                        svc.publish.push(pb);
                    }
                    if svc.publish.is_empty() {
                        return Err(format!("service {service}: a service needs at least one published port (remove the service instead)"));
                    }
                    if let Some(s) = scheduler {
                        svc.scheduler = s;
                    }
                    Ok(())
                })
            }
            Request::Create { service } => self.change(|cfg, ing, node| {
                let svc = Service::from_spec(&service, ing, node)
                    .map_err(|(k, m)| format!("service {}: {k}: {m}", service.name))?;
                cfg.services.push(svc);
                Ok(())
            }),
            Request::Remove { service } => self.change(|cfg, _, _| {
                let before = cfg.services.len();
                cfg.services.retain(|s| s.name != service);
                if cfg.services.len() == before {
                    return Err(format!("no service named `{service}`"));
                }
                Ok(())
            }),
            Request::Handover {
                version,
                workers,
                snat_ports,
            } => self.hand_over_flows(version, workers, snat_ports),
            Request::HandoverDone {} => self.hand_over_done(),
            Request::HandoverAbort { reason } => self.hand_over_aborted(reason),
        }
    }

    /// Applies `edit` to a copy of the configuration, validates the result
    /// and publishes it; on any error the running tables stay as they were.
    fn change(
        &mut self,
        edit: impl FnOnce(
            &mut Config,
            &crate::config::IngressConfig,
            std::net::Ipv4Addr,
        ) -> Result<(), String>,
    ) -> Response {
        if let Some(sw) = &self.cfg.swarm {
            return Response::err(format!(
                "services come from Docker Swarm ({}); change them with `docker service create/update/scale/rm`",
                sw.socket.display()
            ));
        }
        let mut cfg = self.cfg.clone();
        let ingress = cfg.ingress.clone();
        let node = cfg.node.address;
        if let Err(e) = edit(&mut cfg, &ingress, node) {
            return Response::err(e);
        }
        if let Err((k, m)) = check_unique(&cfg.services) {
            return Response::err(format!("{k}: {m}"));
        }
        match self.apply_config(cfg) {
            Ok(m) => Response::ok(json!(m + &self.unresolved_warnings())),
            Err(e) => Response::err(e),
        }
    }

    /// One warning line per task whose node is not resolved: accepted, but
    /// it gets no new flows until the node answers ARP.
    fn unresolved_warnings(&self) -> String {
        let snap = self.snapshot();
        let mut out = String::new();
        for svc in &snap.services {
            for &i in &svc.tasks {
                let t = &snap.tasks[i as usize];
                if !t.reachable() {
                    out.push_str(&format!(
                        "\nwarning: service {}: task {} is unresolved: its node {} has not answered ARP (yet), so it gets no new flows until it does",
                        svc.name, t.addr, t.node
                    ));
                }
            }
        }
        out
    }

    /// The published ports of service `name`, from the configuration.
    fn ports_of(&self, name: &str) -> Vec<PortView> {
        self.cfg
            .services
            .iter()
            .find(|c| c.name == name)
            .map(|c| {
                c.publish
                    .iter()
                    .map(|p| PortView {
                        published: p.published,
                        target: p.target,
                        protocol: p.protocol,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn view_services(&self) -> Vec<ServiceView> {
        let snap = self.snapshot();
        let now = clock_ms();
        snap.services
            .iter()
            .map(|s| ServiceView {
                name: s.name.to_string(),
                mark: s.mark,
                scheduler: s.scheduler.to_string(),
                client_ip: s.client_ip.to_string(),
                publish: self.ports_of(&s.name),
                tasks_up: s
                    .tasks
                    .iter()
                    .filter(|&&i| task_state(&snap.tasks[i as usize], now) == "running")
                    .count(),
                tasks_total: s.tasks.len(),
            })
            .collect()
    }

    fn view_tasks(&self, name: &str) -> Result<Vec<TaskView>, String> {
        let snap = self.snapshot();
        let s = snap
            .services
            .iter()
            .find(|s| &*s.name == name)
            .ok_or_else(|| format!("no service named `{name}`"))?;
        let now = clock_ms();
        Ok(s.tasks
            .iter()
            .map(|&i| {
                let t = &snap.tasks[i as usize];
                let (active, inactive, created) = t.shared.counts();
                TaskView {
                    address: t.addr,
                    node: t.node,
                    mac: t.mac.to_string(),
                    weight: t.weight,
                    state: task_state(t, now).to_string(),
                    ejections: t.shared.health.ejections(),
                    ejected_for_ms: t.shared.health.ejected_for(now),
                    client_ip: snap.services[t.service as usize].client_ip_of(t).into(),
                    active_flows: active,
                    inactive_flows: inactive,
                    flows: created,
                    counters: self.stats.task(t.id),
                }
            })
            .collect())
    }

    fn view_ipvs(&self) -> Vec<IpvsService> {
        let snap = self.snapshot();
        snap.services
            .iter()
            .map(|s| {
                // IPVS shows a fwmark service's real servers with the port
                // they are reached on; Swarm shows 0 because its DNAT picks
                // the port. meshgate shows the target port when the service
                // has one, else 0.
                let targets: std::collections::BTreeSet<u16> =
                    self.ports_of(&s.name).iter().map(|p| p.target).collect();
                let port = match targets.len() {
                    1 => targets.first().copied().unwrap_or(0),
                    _ => 0,
                };
                IpvsService {
                    service: s.name.to_string(),
                    fwmark: s.mark,
                    scheduler: s.scheduler.to_string(),
                    client_ip: s.client_ip.to_string(),
                    reals: s
                        .tasks
                        .iter()
                        .map(|&i| {
                            let t = &snap.tasks[i as usize];
                            IpvsReal {
                                address: t.addr,
                                port,
                                weight: t.weight,
                                active: t.shared.active.load(Ordering::Relaxed),
                                inactive: t.shared.inactive.load(Ordering::Relaxed),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The status page's data: the views of `service ls` and `service ps`
    /// with each task's rates, and the node's statistics.
    pub fn status_view(&self) -> StatusView {
        let snap = self.snapshot();
        let services = self
            .view_services()
            .into_iter()
            .zip(&snap.services)
            .map(|(service, s)| StatusService {
                tasks: s
                    .tasks
                    .iter()
                    .zip(self.view_tasks(&service.name).unwrap_or_default())
                    .map(|(&i, task)| StatusTask {
                        rate: self.rates.task(snap.tasks[i as usize].id),
                        task,
                    })
                    .collect(),
                service,
            })
            .collect();
        let v = self.stats_view();
        StatusView {
            node: self.cfg.node.address,
            node6: self.cfg.node.address6,
            version: env!("CARGO_PKG_VERSION").to_string(),
            mode: if v.swarm.is_some() { "swarm" } else { "file" }.to_string(),
            uptime_seconds: v.uptime_seconds,
            generation: v.generation,
            swarm: v.swarm,
            services,
            flows: v.flows,
            drops: v.drops,
            drops_total: v.drops_total,
            drops_per_second: self.rates.drops(),
            batch_latency_ns: v.batch_latency_ns,
            batch_histogram: super::serve::status::histogram(&self.stats),
            rate: self.rates.view(),
        }
    }

    /// Statistics in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        super::serve::metrics::render(self.snapshot(), &self.stats, clock_ms())
    }
}
