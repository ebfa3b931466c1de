//! The memory for upload part buffers, shared by every upload of the process (every volume of
//! the plugin), so that files being written stay within `--memory-limit` like the cache does.
//!
//! Two rules keep uploads from waiting on each other forever:
//! - A file being streamed while it is written never waits for memory that other uploads hold.
//!   When its next part buffer cannot be had, it waits only for its own parts in flight to
//!   finish; with none left, it stops streaming (its staging file holds every byte, and it is
//!   uploaded from there at close). A file open and idle with a part half filled may hold its
//!   buffer for as long as it stays open, so nothing may wait for it.
//! - An upload from a staging file (at close) may wait, but only for the quarter of the budget
//!   kept for such uploads alone: they hold memory only while they read and send, so a close
//!   always gets its turn. Waiting on the shared part too would let a waiting close take every
//!   byte streams give back (a semaphore hands released permits to its waiters first), and
//!   every stream would stop.
//!
//! A part bigger than the reserved quarter (a budget under 256 MiB with 8 MiB parts) takes the
//! whole reserve and runs alone: memory may then pass the write budget by the difference.

use std::sync::Arc;

use common::metrics::{metrics, GaugeShare};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Memory for part buffers in bytes, handed out as semaphore permits of one byte each.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    /// For every upload; streams only take what is free at once.
    shared: Arc<Semaphore>,
    /// For uploads from staging files only.
    reserved: Arc<Semaphore>,
    reserved_bytes: u64,
}

impl WriteBudget {
    pub fn new(bytes: u64) -> Self {
        let reserved_bytes = bytes / 4;
        Self {
            shared: Arc::new(Semaphore::new(permits(bytes - reserved_bytes))),
            reserved: Arc::new(Semaphore::new(permits(reserved_bytes))),
            reserved_bytes,
        }
    }

    /// Bytes not held by any upload.
    pub fn available(&self) -> u64 {
        (self.shared.available_permits() + self.reserved.available_permits()) as u64
    }

    /// Bytes a stream could take now.
    pub fn available_to_streams(&self) -> u64 {
        self.shared.available_permits() as u64
    }

    /// `bytes` of the shared part if they are free now.
    pub(crate) fn try_take(&self, bytes: u64) -> Option<Reservation> {
        let permit = self
            .shared
            .clone()
            .try_acquire_many_owned(request(bytes))
            .ok()?;
        Some(Reservation::of(permit, bytes))
    }

    /// `bytes` of the shared part if they are free now, else of the reserved part, waiting
    /// for them. A request bigger than the reserved part takes all of it (and so runs alone).
    pub(crate) async fn take(&self, bytes: u64) -> Reservation {
        if let Some(free) = self.try_take(bytes) {
            return free;
        }
        let from_reserved = bytes.min(self.reserved_bytes);
        let permit = self
            .reserved
            .clone()
            .acquire_many_owned(request(from_reserved))
            .await
            .expect("the budget's semaphores are never closed");
        Reservation::of(permit, bytes)
    }
}

fn permits(bytes: u64) -> usize {
    usize::try_from(bytes)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS)
}

fn request(bytes: u64) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

/// Memory held for one upload's buffers; given back when dropped.
#[derive(Debug, Default)]
pub(crate) struct Reservation {
    /// The budget's permits, each with its share of the process metric.
    permits: Vec<(OwnedSemaphorePermit, GaugeShare)>,
    /// What the holder may use (a request bigger than the reserved part holds less).
    bytes: u64,
}

impl Reservation {
    fn of(permit: OwnedSemaphorePermit, bytes: u64) -> Self {
        let held = GaugeShare::new(&metrics().write_buffer_bytes, permit.num_permits() as u64);
        Self {
            permits: vec![(permit, held)],
            bytes,
        }
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    pub(crate) fn add(&mut self, other: Reservation) {
        self.permits.extend(other.permits);
        self.bytes += other.bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_quarter_is_kept_for_uploads_from_staging_files() {
        let budget = WriteBudget::new(100);
        let streams = budget.try_take(75).expect("the shared part is free");
        assert!(
            budget.try_take(1).is_none(),
            "streams cannot take the reserved part"
        );
        assert_eq!(budget.available(), 25);
        drop(streams);
        assert_eq!(budget.available(), 100);
    }

    #[tokio::test]
    async fn an_upload_from_staging_gets_the_reserved_part_while_streams_hold_the_rest() {
        let budget = WriteBudget::new(100);
        let _idle_streams = budget.try_take(75).unwrap();
        let staged = tokio::time::timeout(Duration::from_secs(1), budget.take(20))
            .await
            .expect("the reserved part is free");
        assert_eq!(staged.bytes(), 20);
        assert_eq!(budget.available(), 5);
    }

    #[tokio::test]
    async fn a_request_bigger_than_the_reserve_runs_alone_on_it() {
        let budget = WriteBudget::new(100);
        let _idle_streams = budget.try_take(75).unwrap();
        let staged = tokio::time::timeout(Duration::from_secs(1), budget.take(60))
            .await
            .expect("takes the whole reserve instead of waiting forever");
        assert_eq!(budget.available(), 0);
        drop(staged);
        assert_eq!(budget.available(), 25);
    }

    #[tokio::test]
    async fn a_waiting_upload_leaves_what_streams_give_back_to_streams() {
        let budget = WriteBudget::new(100);
        let streams = budget.try_take(75).unwrap();
        let staged = budget.take(25).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(25).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(streams);
        assert!(
            budget.try_take(75).is_some(),
            "the waiting upload took memory streams gave back"
        );
        drop(staged);
        assert_eq!(waiting.await.unwrap(), 25);
    }

    #[tokio::test]
    async fn a_waiting_upload_goes_on_once_memory_is_given_back() {
        let budget = WriteBudget::new(100);
        let streams = budget.try_take(75).unwrap();
        let first = budget.take(25).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.take(25).await.bytes() }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "nothing is free yet");
        drop(first);
        assert_eq!(waiting.await.unwrap(), 25);
        drop(streams);
    }
}
