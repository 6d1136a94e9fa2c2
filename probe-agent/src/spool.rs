//! The offline spool: results wait here until the controller has acknowledged them.
//!
//! A volunteer's machine sleeps, loses Wi-Fi and reboots; a result measured just before
//! must still reach the controller. Each result is written to its own file (named by
//! its assignment id, written to a temporary name, synced, then renamed so a crash never
//! leaves half a file) *before* the first attempt to send it, and removed only after the
//! controller's acknowledgement. Because results are idempotent by assignment id,
//! re-sending a spooled result that did arrive is harmless.
//!
//! The spool is bounded (a volunteer's disk is not ours to fill during a week-long
//! outage). When it is full the *oldest* results are kept, because they are the ones
//! closest to their lease and the longest unreported, and a new result is refused; the
//! runner stops taking work while the spool is full, so nothing new is measured only to
//! be dropped.

use std::io::Write;
use std::path::{Path, PathBuf};

use lastmile_protocol::ResultSubmission;
use uuid::Uuid;

/// A directory of results not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    max_results: usize,
}

/// Default for the most results a spool keeps.
pub const DEFAULT_MAX_RESULTS: usize = 10_000;

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, keeping at most `max_results`.
    pub fn open(dir: impl Into<PathBuf>, max_results: usize) -> std::io::Result<Spool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Spool {
            dir,
            max_results: max_results.max(1),
        })
    }

    /// How many results wait in the spool.
    pub fn len(&self) -> std::io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            if entry?.path().extension().and_then(|e| e.to_str()) == Some("json") {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Whether no result waits.
    pub fn is_empty(&self) -> std::io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Whether a new result would be refused.
    pub fn is_full(&self) -> std::io::Result<bool> {
        Ok(self.len()? >= self.max_results)
    }

    fn path_of(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Durably stores a result; returns once it is on disk. A full spool refuses a new
    /// result (`StorageFull`) and keeps the ones it has.
    pub fn put(&self, result: &ResultSubmission) -> std::io::Result<()> {
        if !self.path_of(result.assignment_id).exists() && self.is_full()? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "spool full: {} results wait for the controller in {}",
                    self.max_results,
                    self.dir.display()
                ),
            ));
        }
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
            let spool = Spool::open(dir.path(), 10).unwrap();
            spool.put(&a).unwrap();
            spool.put(&b).unwrap();
        }
        let spool = Spool::open(dir.path(), 10).unwrap();
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

    #[test]
    fn a_full_spool_keeps_the_oldest_results_and_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 2).unwrap();
        let (a, b, c) = (result(), result(), result());
        spool.put(&a).unwrap();
        spool.put(&b).unwrap();
        assert!(spool.is_full().unwrap());
        let err = spool.put(&c).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert!(err.to_string().contains("spool full: 2 results"), "{err}");
        // Re-spooling a result already kept is not a new result.
        spool.put(&a).unwrap();
        let mut kept: Vec<Uuid> = spool
            .pending()
            .unwrap()
            .iter()
            .map(|r| r.assignment_id)
            .collect();
        kept.sort();
        let mut want = vec![a.assignment_id, b.assignment_id];
        want.sort();
        assert_eq!(kept, want);
        // Once one is acknowledged there is room again.
        spool.remove(a.assignment_id).unwrap();
        spool.put(&c).unwrap();
        assert_eq!(spool.len().unwrap(), 2);
    }
}
