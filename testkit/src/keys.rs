//! The key file meshgates sign their announcements with, as a user makes
//! it (`openssl rand -hex 32 > key; chmod 600 key`); removed when dropped.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub struct KeyFile(PathBuf);

impl KeyFile {
    /// A fresh random key at `path`, mode 0600.
    pub fn create(path: &Path) -> std::io::Result<KeyFile> {
        let mut raw = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut raw)?;
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        std::io::Write::write_all(&mut f, format!("{hex}\n").as_bytes())?;
        Ok(KeyFile(path.to_path_buf()))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The `[node]` line that names it.
    pub fn toml(&self) -> String {
        format!("announce_key = \"{}\"\n", self.0.display())
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
