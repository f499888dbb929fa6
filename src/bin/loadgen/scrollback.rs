//! The soak mode's scroll-back reader: a thread that pages through the chat rooms' history
//! over the HTTP API (`/api/rooms/<room>/messages?before=<id>&limit=<n>`), as a client
//! scrolling up does, and checks every page: ids climb by one, all below `before`, and the
//! page ends right below `before` (ids are gapless, and SQLite keeps every message).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::cli::Target;
use crate::http;
use crate::rng::Rng;

/// Pause between two page reads: about ten pages a second, a steady trickle of disk reads
/// next to the chat (each read parks its HTTP connection until the storage thread answers).
const PAGE_PAUSE: Duration = Duration::from_millis(100);

/// Messages per page, the API's default and what a client asks for.
const PAGE_LIMIT: u64 = 50;

/// What the reader found, shared with the soak run (atomics: read while the thread runs).
#[derive(Default)]
pub struct ScrollStats {
    /// Pages read and checked.
    pub pages: AtomicU64,
    /// Messages on those pages.
    pub messages: AtomicU64,
    /// Pages that broke a rule (wrong order, a hole, ids at or above `before`).
    pub bad_pages: AtomicU64,
    /// Requests that failed outright (no answer, not 200, not JSON).
    pub failed: AtomicU64,
}

/// The reader thread and how to stop it.
pub struct ScrollReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Its findings.
    pub stats: Arc<ScrollStats>,
}

impl ScrollReader {
    /// Starts paging through `rooms` in turn until `stop` is called.
    pub fn start(target: Target, rooms: Vec<String>, seed: u64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ScrollStats::default());
        let (stop_flag, shared) = (Arc::clone(&stop), Arc::clone(&stats));
        let thread = std::thread::spawn(move || {
            let mut rng = Rng::new(seed);
            let mut turn = 0usize;
            while !stop_flag.load(Ordering::Relaxed) {
                if let Some(room) = rooms.get(turn % rooms.len().max(1)) {
                    read_one(&target, room, &mut rng, &shared);
                }
                turn += 1;
                std::thread::sleep(PAGE_PAUSE);
            }
        });
        ScrollReader { stop, thread: Some(thread), stats }
    }

    /// Stops the thread and waits for it (at most one request's timeout).
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // A panic in the reader would already have shown on stderr; nothing to add.
            let _ = thread.join();
        }
    }
}

/// One page's ids and the `oldest_id` the server reported; no ids for a room that does not
/// exist yet (404: nobody joined it so far).
fn read_page(target: &Target, room: &str, before: Option<u64>) -> Result<(Vec<u64>, Option<u64>), String> {
    let mut path = format!("{}/api/rooms/{room}/messages?limit={PAGE_LIMIT}", target.base);
    if let Some(before) = before {
        path.push_str(&format!("&before={before}"));
    }
    let (status, body) = http::get(target.addr, &target.host, &path)?;
    if status == 404 {
        return Ok((Vec::new(), None));
    }
    if status != 200 {
        return Err(format!("{path}: status {status}"));
    }
    let page: serde_json::Value = serde_json::from_str(&body).map_err(|e| format!("{path}: {e}"))?;
    let ids = page
        .get("messages")
        .and_then(|m| m.as_array())
        .ok_or_else(|| format!("{path}: no messages array"))?
        .iter()
        .map(|m| m.get("id").and_then(|id| id.as_u64()).ok_or_else(|| format!("{path}: a message without an id")))
        .collect::<Result<Vec<u64>, String>>()?;
    Ok((ids, page.get("oldest_id").and_then(|id| id.as_u64())))
}

/// Reads the newest page of `room` to learn its newest id, then a page from a random point
/// below it, and checks that one.
fn read_one(target: &Target, room: &str, rng: &mut Rng, stats: &ScrollStats) {
    let newest = match read_page(target, room, None) {
        Ok((ids, _)) => ids.last().copied().unwrap_or(0),
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    if newest == 0 {
        return;
    }
    let before = 2 + rng.below(newest);
    match read_page(target, room, Some(before)) {
        Ok((ids, oldest)) => {
            stats.pages.fetch_add(1, Ordering::Relaxed);
            stats.messages.fetch_add(ids.len() as u64, Ordering::Relaxed);
            if !page_is_whole(&ids, before, oldest.unwrap_or(1)) {
                stats.bad_pages.fetch_add(1, Ordering::Relaxed);
            }
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A page below `before` is whole when its ids climb by one and end at `before - 1`, and it
/// holds `PAGE_LIMIT` of them or reaches down to the oldest id history holds.
fn page_is_whole(ids: &[u64], before: u64, oldest: u64) -> bool {
    let climbs = ids.windows(2).all(|w| matches!(w, [a, b] if *b == *a + 1));
    let ends_right = ids.last() == Some(&(before - 1));
    let long_enough = ids.len() as u64 == PAGE_LIMIT || ids.first() == Some(&oldest);
    climbs && ends_right && long_enough
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_with_holes_or_a_wrong_end_are_not_whole() {
        let full: Vec<u64> = (51..=100).collect();
        assert!(page_is_whole(&full, 101, 1));
        assert!(page_is_whole(&[1, 2, 3], 4, 1));
        assert!(!page_is_whole(&[1, 2, 3], 5, 1), "must end right below before");
        assert!(!page_is_whole(&[1, 3, 4], 5, 1), "a hole");
        assert!(!page_is_whole(&[2, 3, 4], 5, 1), "short, and not down to the oldest");
        assert!(!page_is_whole(&[], 5, 1));
    }
}
