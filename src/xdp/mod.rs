//! Everything that talks to the kernel's XDP machinery, and the only module
//! with `unsafe` code: the `bpf(2)` calls, the XDP programs and their maps,
//! the UMEM and the AF_XDP rings; and the shared file mapping the flow
//! journal is written to (`shm`).
//!
//! Every `unsafe` block carries a `// SAFETY:` comment. The rest of meshgate
//! sees safe types only: [`umem::FrameToken`]s that own UMEM frames, and
//! [`port::Port`]s that move them through a queue's rings.
#![warn(missing_docs)]
#![allow(unsafe_code)]

pub mod asm;
pub mod bpf;
pub mod btf;
pub mod port;
pub mod program;
pub mod shm;
pub mod umem;

pub use port::{BindMode, Port, Xsk, XskConfig, XskError, XskStats};
pub use umem::{FrameToken, Umem};
