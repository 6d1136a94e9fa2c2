//! The offline spool: results wait here until the controller has acknowledged them.
//!
//! A volunteer's machine sleeps, loses Wi-Fi and reboots; a result measured just before
//! must still reach the controller. Each result is written to its own file (named by
//! its assignment id, written to a temporary name, synced, then renamed so a crash never
//! leaves half a file) *before* the first attempt to send it, and removed only after the
//! controller's acknowledgement. Because results are idempotent by assignment id,
//! re-sending a spooled result that did arrive is harmless.

use std::io::Write;
use std::path::{Path, PathBuf};

use lastmile_protocol::ResultSubmission;
use uuid::Uuid;

/// A directory of results not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Spool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Spool { dir })
    }

    fn path_of(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Durably stores a result; returns once it is on disk.
    pub fn put(&self, result: &ResultSubmission) -> std::io::Result<()> {
        let json = serde_json::to_vec(result).map_err(std::io::Error::other)?;
        let tmp = self.dir.join(format!(".{}.tmp", result.assignment_id));
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.path_of(result.assignment_id))?;
        Ok(())
    }

    /// Forgets a result the controller acknowledged.
    pub fn remove(&self, id: Uuid) -> std::io::Result<()> {
        match std::fs::remove_file(self.path_of(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Every stored result, oldest file first. Unreadable files are skipped and logged,
    /// never deleted: a person may want to look at them.
    pub fn pending(&self) -> std::io::Result<Vec<ResultSubmission>> {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let modified = entry.metadata()?.modified()?;
            entries.push((modified, path));
        }
        entries.sort();
        Ok(entries
            .into_iter()
            .filter_map(|(_, path)| read_result(&path))
            .collect())
    }
}

fn read_result(path: &Path) -> Option<ResultSubmission> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable spooled result left in place");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lastmile_protocol::{Measurement, Timings};

    fn result() -> ResultSubmission {
        ResultSubmission {
            assignment_id: Uuid::new_v4(),
            started_at: chrono::Utc::now(),
            measurement: Measurement {
                status: Some(200),
                bytes: 5,
                error: None,
                timings_us: Timings::default(),
                ..Measurement::default()
            },
        }
    }

    #[test]
    fn results_survive_reopening_until_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (result(), result());
        {
            let spool = Spool::open(dir.path()).unwrap();
            spool.put(&a).unwrap();
            spool.put(&b).unwrap();
        }
        let spool = Spool::open(dir.path()).unwrap();
        let mut ids: Vec<Uuid> = spool
            .pending()
            .unwrap()
            .iter()
            .map(|r| r.assignment_id)
            .collect();
        ids.sort();
        let mut want = vec![a.assignment_id, b.assignment_id];
        want.sort();
        assert_eq!(ids, want);
        spool.remove(a.assignment_id).unwrap();
        spool.remove(a.assignment_id).unwrap();
        assert_eq!(spool.pending().unwrap(), vec![b]);
    }
}
