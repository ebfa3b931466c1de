//! The rename gate: a rename moves every name at and below its source, in several store
//! requests and one last step in the inode table. An operation that found a path before that
//! step and acts on it after (a lookup that adds an inode, a create, the first write that
//! fixes a file's object key) would act on the old name: an inode nobody can read, an object
//! left behind under the moved folder's old name.
//!
//! So each such operation goes through the gate with its path ([`RenameGate::pass`]), and a
//! rename closes the gate on its source and target ([`RenameGate::close`]): the operations in
//! flight there finish first, new ones wait until the rename is done and then find their path
//! again. Operations elsewhere never wait.
//!
//! An operation holds one pass at a time: the whole operation (a task) runs
//! [`through_gate`], and the operations it calls on the same name inside (a create's lookup, an
//! open's getattr) do not ask again, which could wait on a rename that waits for the first
//! pass. A rename runs its own steps the same way.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::Notify;

use super::is_at_or_below;

tokio::task_local! {
    /// Set while a task runs an operation that is through the gate (or is the rename that
    /// closed it).
    static THROUGH_GATE: ();
}

/// Whether the current task is inside an operation that went through the gate already.
pub fn is_through_gate() -> bool {
    THROUGH_GATE.try_with(|_| ()).is_ok()
}

/// Run `op` as through the gate: what it calls on the same name asks for no pass of its own.
pub async fn through_gate<F: Future>(op: F) -> F::Output {
    THROUGH_GATE.scope((), op).await
}

#[derive(Debug, Default)]
pub struct RenameGate {
    state: Mutex<GateState>,
    /// Notified when a pass ends while a rename waits, and when a rename opens the gate again.
    changed: Notify,
}

#[derive(Debug, Default)]
struct GateState {
    /// Source and target of the rename under way (renames run one at a time).
    closed: Vec<String>,
    /// Paths of the operations in flight, each with how many.
    passes: HashMap<String, usize>,
}

impl GateState {
    fn is_closed_at(&self, path: &str) -> bool {
        self.closed.iter().any(|top| is_at_or_below(path, top))
    }

    fn any_pass_at_or_below(&self, top: &str) -> bool {
        self.passes.keys().any(|path| is_at_or_below(path, top))
    }
}

impl RenameGate {
    /// A pass for an operation on `path`, once no rename is moving it. The caller checks that
    /// `path` is still the name's path after a wait.
    pub async fn pass(&self, path: &str) -> Pass<'_> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check: a rename ending between the two wakes this one.
            changed.as_mut().enable();
            if let Some(pass) = self.try_pass(path) {
                return pass;
            }
            changed.await;
        }
    }

    /// A pass for an operation on `path` if no rename is moving it, without waiting. As with
    /// [`pass`](Self::pass), the caller checks that `path` is still the name's path.
    pub fn try_pass(&self, path: &str) -> Option<Pass<'_>> {
        let mut state = self.state.lock().unwrap();
        if state.is_closed_at(path) {
            return None;
        }
        *state.passes.entry(path.to_string()).or_default() += 1;
        Some(Pass {
            gate: self,
            path: path.to_string(),
        })
    }

    /// Whether a rename has closed the gate (or is closing it).
    #[cfg(test)]
    pub fn is_closed(&self) -> bool {
        !self.state.lock().unwrap().closed.is_empty()
    }

    /// Close the gate at and below `from` and `to` for a rename, once the operations in
    /// flight there are done. It opens again when the returned guard drops.
    pub async fn close(&self, from: &str, to: &str) -> Closed<'_> {
        self.state.lock().unwrap().closed = vec![from.to_string(), to.to_string()];
        // Dropped while waiting (a cancelled rename), the gate opens again.
        let closed = Closed { gate: self };
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.state.lock().unwrap();
                if !state.any_pass_at_or_below(from) && !state.any_pass_at_or_below(to) {
                    return closed;
                }
            }
            changed.await;
        }
    }
}

/// An operation's way through the gate; the rename waiting for it goes on when it drops.
#[derive(Debug)]
pub struct Pass<'a> {
    gate: &'a RenameGate,
    path: String,
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let rename_waiting = {
            let mut state = self.gate.state.lock().unwrap();
            if let Some(count) = state.passes.get_mut(&self.path) {
                *count -= 1;
                if *count == 0 {
                    state.passes.remove(&self.path);
                }
            }
            !state.closed.is_empty()
        };
        // Only a closing rename waits for passes to end (the operations waiting for a pass
        // wait for the rename): no need to wake them all at every operation's end.
        if rename_waiting {
            self.gate.changed.notify_waiters();
        }
    }
}

/// The gate closed by a rename; open again when dropped.
#[derive(Debug)]
pub struct Closed<'a> {
    gate: &'a RenameGate,
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.gate.state.lock().unwrap().closed.clear();
        self.gate.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn paths_are_below_whole_names_only() {
        assert!(is_at_or_below("a", "a"));
        assert!(is_at_or_below("a/b", "a"));
        assert!(!is_at_or_below("ab", "a"));
        assert!(!is_at_or_below("a", "a/b"));
    }

    #[tokio::test]
    async fn a_rename_waits_for_passes_below_it_and_holds_off_new_ones_until_it_is_done() {
        let gate = Arc::new(RenameGate::default());
        let in_flight = gate.pass("a/x").await;
        let elsewhere = gate.pass("ab/x").await;
        let rename = {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _closed = gate.close("a", "b").await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !rename.is_finished(),
            "a pass below the source is in flight"
        );
        // Closing: new operations below the source or the target wait, others do not.
        let waiting_below_source = {
            let gate = gate.clone();
            tokio::spawn(async move { drop(gate.pass("a/y").await) })
        };
        let waiting_at_target = {
            let gate = gate.clone();
            tokio::spawn(async move { drop(gate.pass("b").await) })
        };
        drop(gate.pass("c").await);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting_below_source.is_finished());
        assert!(!waiting_at_target.is_finished());
        drop(elsewhere);
        drop(in_flight);
        rename.await.unwrap();
        waiting_below_source.await.unwrap();
        waiting_at_target.await.unwrap();
        assert!(gate.state.lock().unwrap().passes.is_empty());
    }

    #[tokio::test]
    async fn what_an_operation_through_the_gate_calls_asks_for_no_pass_again() {
        assert!(!is_through_gate());
        through_gate(async {
            assert!(is_through_gate());
        })
        .await;
        assert!(!is_through_gate());
    }
}
