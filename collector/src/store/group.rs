//! Group commit: concurrent callers hand their work to a queue, and one of them at a time — the
//! leader — takes everything queued and writes it together (one transaction, one flush), then
//! hands each caller its own result. No thread of its own: the first caller to find no write
//! running becomes the leader, the others wait for their results or for their turn to lead.
//!
//! Grouping is what makes a store's cost per report fall as load rises: cells shared by the
//! group's reports are read, merged and written once per group instead of once per report,
//! and one `fsync` covers every batch in it.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};

/// A queue of work items of type `T`, each answered with an `R`.
pub struct GroupCommit<T, R> {
    state: Mutex<State<T, R>>,
    done: Condvar,
}

struct State<T, R> {
    /// Queued work, in arrival order, under its ticket.
    queue: Vec<(u64, T)>,
    /// Results not yet collected; `None` when the group's leader failed (panicked) before it
    /// had one.
    results: HashMap<u64, Option<R>>,
    next_ticket: u64,
    writing: bool,
    /// Groups written so far (for tests and figures).
    groups: u64,
}

impl<T, R> Default for GroupCommit<T, R> {
    fn default() -> Self {
        GroupCommit {
            state: Mutex::new(State {
                queue: Vec::new(),
                results: HashMap::new(),
                next_ticket: 0,
                writing: false,
                groups: 0,
            }),
            done: Condvar::new(),
        }
    }
}

/// Written when a leader's write unwinds: the tickets it took get no result (`None`), and the
/// queue is free for the next leader, so that no follower waits forever.
struct Release<'a, T, R> {
    owner: &'a GroupCommit<T, R>,
    tickets: Vec<u64>,
    finished: bool,
}

impl<T, R> Drop for Release<'_, T, R> {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut st = self.owner.lock();
        for t in self.tickets.drain(..) {
            st.results.insert(t, None);
        }
        st.writing = false;
        self.owner.done.notify_all();
    }
}

impl<T, R> GroupCommit<T, R> {
    fn lock(&self) -> MutexGuard<'_, State<T, R>> {
        // A poisoned lock only means a leader panicked; `Release` left the state consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` and returns its result: written by this caller, as the leader of a group
    /// of everything queued by then, or by another caller's group. `write` gets a group's
    /// items in arrival order and must return one result per item, in the same order (a
    /// missing result is `None` for its caller, as is every result of a group whose `write`
    /// panicked).
    pub fn submit(&self, item: T, write: impl Fn(Vec<T>) -> Vec<R>) -> Option<R> {
        let mut st = self.lock();
        let mine = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((mine, item));
        loop {
            if let Some(result) = st.results.remove(&mine) {
                return result;
            }
            if st.writing {
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Lead: take everything queued (our own item among it, unless an earlier leader
            // wrote it, whose result we would have found above).
            st.writing = true;
            st.groups += 1;
            let (tickets, items): (Vec<u64>, Vec<T>) =
                std::mem::take(&mut st.queue).into_iter().unzip();
            drop(st);
            let mut release = Release {
                owner: self,
                tickets,
                finished: false,
            };
            let mut results = write(items).into_iter();
            st = self.lock();
            for t in release.tickets.drain(..) {
                st.results.insert(t, results.next());
            }
            st.writing = false;
            release.finished = true;
            self.done.notify_all();
        }
    }

    /// Groups written so far.
    pub fn groups(&self) -> u64 {
        self.lock().groups
    }

    /// Items waiting for a leader.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Holds the queue as if a leader were writing, until the returned guard is dropped: for
    /// tests that need several callers queued behind one write.
    #[cfg(test)]
    pub fn hold(&self) -> Hold<'_, T, R> {
        let mut st = self.lock();
        while st.writing {
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.writing = true;
        Hold { owner: self }
    }
}

#[cfg(test)]
pub struct Hold<'a, T, R> {
    owner: &'a GroupCommit<T, R>,
}

#[cfg(test)]
impl<T, R> Drop for Hold<'_, T, R> {
    fn drop(&mut self) {
        self.owner.lock().writing = false;
        self.owner.done.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::GroupCommit;
    use std::sync::Arc;

    /// Waits until `n` items are queued (an event, not a sleep: each check yields).
    fn until_queued(g: &GroupCommit<u32, u32>, n: usize) {
        while g.queued() < n {
            std::thread::yield_now();
        }
    }

    /// Submits items `0..n`, each from a thread of its own running `call`, one after another
    /// so that they queue in this order (behind a writer the caller holds).
    fn queue_in_order<T: Send + 'static>(
        g: &Arc<GroupCommit<u32, u32>>,
        n: u32,
        call: impl Fn(&GroupCommit<u32, u32>, u32) -> T + Clone + Send + 'static,
    ) -> Vec<std::thread::JoinHandle<T>> {
        (0..n)
            .map(|i| {
                let (g2, call) = (g.clone(), call.clone());
                let t = std::thread::spawn(move || call(&g2, i));
                until_queued(g, i as usize + 1);
                t
            })
            .collect()
    }

    #[test]
    fn one_caller_writes_its_own_item_alone() {
        let g = GroupCommit::<u32, u32>::default();
        assert_eq!(
            g.submit(7, |items| items.iter().map(|i| i * 2).collect()),
            Some(14)
        );
        assert_eq!(g.groups(), 1);
    }

    #[test]
    fn callers_queued_behind_a_write_are_written_as_one_group_in_arrival_order() {
        let g = Arc::new(GroupCommit::<u32, u32>::default());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hold = g.hold();
        let seen2 = seen.clone();
        let threads = queue_in_order(&g, 6, move |g, i| {
            g.submit(i, |items| {
                seen2.lock().unwrap().push(items.clone());
                items.iter().map(|i| i + 100).collect()
            })
        });
        drop(hold);
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results, (100..106).map(Some).collect::<Vec<_>>());
        let seen = seen.lock().unwrap();
        assert_eq!(*seen, vec![vec![0, 1, 2, 3, 4, 5]], "one group, in order");
        assert_eq!(g.groups(), 1);
    }

    #[test]
    fn a_panicking_write_fails_its_group_and_frees_the_queue() {
        let g = Arc::new(GroupCommit::<u32, u32>::default());
        let hold = g.hold();
        let threads = queue_in_order(&g, 2, |g, i| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                g.submit(i, |_| panic!("write failed"))
            }))
        });
        drop(hold);
        let outcomes: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        // Both were in one group: its leader's panic reaches the leader, the other caller gets
        // no result instead of waiting forever.
        let panicked = outcomes.iter().filter(|o| o.is_err()).count();
        let none = outcomes.iter().filter(|o| matches!(o, Ok(None))).count();
        assert_eq!((panicked, none), (1, 1));
        assert_eq!(g.groups(), 1);
        // And the queue takes new work.
        assert_eq!(g.submit(3, |items| items), Some(3));
    }

    #[test]
    fn a_write_that_returns_too_few_results_leaves_the_rest_none() {
        let g = Arc::new(GroupCommit::<u32, u32>::default());
        let hold = g.hold();
        let threads = queue_in_order(&g, 2, |g, i| {
            g.submit(i, |items| items.into_iter().take(1).collect())
        });
        drop(hold);
        let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(results, vec![Some(0), None]);
    }
}
