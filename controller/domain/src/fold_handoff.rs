//! Results handed from the accepting transaction to the folder in memory, so that a
//! fold does not read back from the database what this process has just written.
//!
//! Reading a batch's results back (by key, with their agents' volunteers) was the
//! largest statement of the fold: 8 µs a result of PostgreSQL's time in `bench ingest`,
//! a tenth of the whole accept path. The queue in the database stays the truth: a
//! result is folded because its queue entry was taken, never because it is held here.
//! What the folder finds here it uses; what it does not (queued by another replica,
//! before a restart, or dropped from here) it reads back as before. Entries another
//! replica's folder took are never asked for: they are dropped after [`KEEP`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lastmile_storage::results::StoredResult;

/// Most results held: past it, new ones are not held (the folder reads them back).
/// Sized to seconds of a busy replica's results (the capacity model's peak is ~1,000 a
/// second; `bench ingest` in process accepts ~25,000), not to a backlog: a page check's
/// result carries its page summary, several KB, so 20k results stay within ~100 MB.
const CAP: usize = 20_000;

/// How long a result is held for the folder of this process: far longer than a fold
/// normally waits (it runs right after each accept, and every second).
const KEEP: Duration = Duration::from_secs(60);

/// Queued results of this process and their agents' volunteers, by assignment id.
#[derive(Debug, Default)]
pub struct Handoff {
    held: Mutex<Holdings>,
}

#[derive(Debug, Default)]
struct Holdings {
    by_id: HashMap<String, Held>,
    /// When entries past [`KEEP`] were last swept out.
    swept: Option<Instant>,
}

#[derive(Debug)]
struct Held {
    result: StoredResult,
    volunteer_id: String,
    since: Instant,
}

impl Handoff {
    /// Holds results whose queue entries have just committed.
    pub fn give(&self, results: Vec<(StoredResult, String)>) {
        if results.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Entries another replica's folder took are never asked for: swept by age once
        // the map is half full (at most once a second), so they cannot pin it full.
        let due = held
            .swept
            .is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if held.by_id.len() + results.len() > CAP / 2 && due {
            held.by_id.retain(|_, h| now.duration_since(h.since) < KEEP);
            held.swept = Some(now);
        }
        for (result, volunteer_id) in results {
            if held.by_id.len() >= CAP {
                break;
            }
            held.by_id.insert(
                result.assignment_id.clone(),
                Held {
                    result,
                    volunteer_id,
                    since: now,
                },
            );
        }
    }

    /// Takes the held results among `ids`; returns them and the ids not held.
    pub fn take(&self, ids: Vec<String>) -> (Vec<(StoredResult, String)>, Vec<String>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for id in ids {
            match held.by_id.remove(&id) {
                Some(h) => found.push((h.result, h.volunteer_id)),
                None => missing.push(id),
            }
        }
        (found, missing)
    }

    /// How many results are held.
    pub fn len(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_id
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
