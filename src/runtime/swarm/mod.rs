//! A running meshgate's part of the swarm: Docker followed through its
//! events and reads ([`follow`]), the return paths of this node's tasks
//! for services that keep the client's address ([`agent`]), and other
//! nodes' announcements of theirs ([`peers`]).

pub mod agent;
pub mod follow;
pub mod peers;
