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
//!
//! A result the controller refuses for good (a 4xx such as `invalid_text` or
//! `assignment_not_found`, see `ClientError::is_rejection`) would be retried forever,
//! so it moves out of the spool into `rejected/` beside it, with the controller's
//! answer next to it (`<id>.reason.json`), for the volunteer or a developer to look
//! at. That folder is bounded like the spool: when it is full, further refused results
//! are dropped (and logged) instead.

use std::io::Write;
use std::path::{Path, PathBuf};

use lastmile_protocol::{ApiError, ResultSubmission};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A directory of results not yet acknowledged.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Where refused results go: `rejected/` beside `dir`.
    rejected: PathBuf,
    max_results: usize,
}

/// Why the controller refused a result, kept beside it in `rejected/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The HTTP status of the refusal.
    pub status: u16,
    /// The controller's stable error code.
    pub error: String,
    /// The controller's message.
    pub message: String,
    pub rejected_at: chrono::DateTime<chrono::Utc>,
}

/// What [`Spool::reject`] did with a refused result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Moved to `rejected/`, which now holds this many results.
    Kept { rejected: usize },
    /// `rejected/` was full: the result was dropped.
    Dropped,
}

/// Default for the most results a spool keeps.
pub const DEFAULT_MAX_RESULTS: usize = 10_000;

impl Spool {
    /// Opens (creating if needed) the spool in `dir`, keeping at most `max_results`.
    pub fn open(dir: impl Into<PathBuf>, max_results: usize) -> std::io::Result<Spool> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let rejected = dir.with_file_name("rejected");
        Ok(Spool {
            dir,
            rejected,
            max_results: max_results.max(1),
        })
    }

    /// The folder refused results are moved to.
    pub fn rejected_dir(&self) -> &Path {
        &self.rejected
    }

    /// How many refused results `rejected/` holds.
    pub fn rejected_len(&self) -> std::io::Result<usize> {
        match count_results(&self.rejected) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            other => other,
        }
    }

    /// Moves a result the controller refused for good out of the spool into
    /// `rejected/`, with `answer` (the refusal) saved next to it as `<id>.reason.json`.
    /// A result that never made it into the spool is written there from memory.
    pub fn reject(
        &self,
        result: &ResultSubmission,
        status: u16,
        answer: &ApiError,
    ) -> std::io::Result<Rejected> {
        let id = result.assignment_id;
        let kept = self.rejected_len()?;
        let target = self.rejected.join(format!("{id}.json"));
        if !target.exists() && kept >= self.max_results {
            self.remove(id)?;
            return Ok(Rejected::Dropped);
        }
        std::fs::create_dir_all(&self.rejected)?;
        let reason = Rejection {
            status,
            error: answer.error.clone(),
            message: answer.message.clone(),
            rejected_at: chrono::Utc::now(),
        };
        let reason = serde_json::to_vec_pretty(&reason).map_err(std::io::Error::other)?;
        write_durably(&self.rejected, &format!("{id}.reason.json"), &reason)?;
        // The reason first: a crash between the two leaves the result in the spool, to
        // be sent (and refused) again, never a result in `rejected/` without its reason.
        match std::fs::rename(self.path_of(id), &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let json = serde_json::to_vec(result).map_err(std::io::Error::other)?;
                write_durably(&self.rejected, &format!("{id}.json"), &json)?;
            }
            Err(e) => return Err(e),
        }
        Ok(Rejected::Kept {
            rejected: self.rejected_len()?,
        })
    }

    /// How many results wait in the spool.
    pub fn len(&self) -> std::io::Result<usize> {
        count_results(&self.dir)
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
        write_durably(&self.dir, &format!("{}.json", result.assignment_id), &json)
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

/// Results (`<id>.json`, not reasons) in `dir`.
fn count_results(dir: &Path) -> std::io::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_reason = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(".reason.json"));
        if path.extension().and_then(|e| e.to_str()) == Some("json") && !is_reason {
            n += 1;
        }
    }
    Ok(n)
}

/// Writes `dir/name` so that a crash never leaves half a file: to a temporary name,
/// synced, then renamed.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
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
    fn a_refused_result_moves_to_rejected_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path().join("spool"), 1).unwrap();
        let (a, b) = (result(), result());
        spool.put(&a).unwrap();
        let answer = ApiError {
            error: "invalid_text".into(),
            message: "measurement.remote_addr contains a NUL character".into(),
        };
        assert_eq!(
            spool.reject(&a, 422, &answer).unwrap(),
            Rejected::Kept { rejected: 1 }
        );
        assert!(spool.is_empty().unwrap());
        assert_eq!(spool.rejected_dir(), dir.path().join("rejected"));
        let id = a.assignment_id;
        let kept: ResultSubmission = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("rejected/{id}.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(kept, a);
        let reason: Rejection = serde_json::from_slice(
            &std::fs::read(dir.path().join(format!("rejected/{id}.reason.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(
            (reason.status, reason.error.as_str()),
            (422, "invalid_text")
        );
        assert_eq!(reason.message, answer.message);
        // The folder is bounded like the spool: one more refused result is dropped.
        spool.put(&b).unwrap();
        assert_eq!(spool.reject(&b, 404, &answer).unwrap(), Rejected::Dropped);
        assert!(spool.is_empty().unwrap());
        assert_eq!(spool.rejected_len().unwrap(), 1);
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
