//! The one thread a stream police evaluates its batches on.
//!
//! Why one thread, always the same: the compiled regexes of the rules keep their search
//! caches in a pool whose fast path serves only the first thread that used it; every other
//! thread takes a lock per search (11 % of the police's time at `--pack 100` with 20 rules
//! when batches went to tokio's blocking pool). Evaluating beside the runtime thread keeps
//! the overlap with Redis (see `drain_backlog`).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

pub struct EvaluationThread {
    jobs: mpsc::Sender<Job>,
}

impl EvaluationThread {
    /// Starts the thread; it ends when this handle is dropped.
    pub fn start() -> std::io::Result<EvaluationThread> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new().name("evaluation".into()).spawn(move || {
            for job in queue {
                job();
            }
        })?;
        Ok(EvaluationThread { jobs })
    }

    /// Starts `work` on the thread at once; the future gives its result (a panic in it is
    /// resumed there).
    pub fn run<T, W>(&self, work: W) -> impl Future<Output = T> + use<T, W>
    where
        T: Send + 'static,
        W: FnOnce() -> T + Send + 'static,
    {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(catch_unwind(AssertUnwindSafe(work)));
        });
        self.jobs
            .send(job)
            .expect("the evaluation thread lives as long as its handle");
        async move {
            match result.await.expect("the evaluation thread answers every job") {
                Ok(value) => value,
                Err(panic) => resume_unwind(panic),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_in_order_on_one_thread_and_panics_come_back() {
        let thread = EvaluationThread::start().unwrap();
        let first = thread.run(|| std::thread::current().id()).await;
        let second = thread.run(|| std::thread::current().id()).await;
        assert_eq!(first, second);
        assert_ne!(first, std::thread::current().id());
        let panicked = tokio::spawn(async move { thread.run(|| panic!("boom")).await }).await;
        assert!(panicked.unwrap_err().is_panic());
    }
}
