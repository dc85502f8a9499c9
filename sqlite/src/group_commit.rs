//! Group commit: concurrent writes share one transaction, and so one fsync.
//!
//! SQLite has one writer at a time, and with `synchronous = FULL` each commit waits for the disk.
//! Every append and every `mark_published` therefore goes to one writer task, which takes what is
//! queued (up to `max_group` writes) and writes it in one `BEGIN IMMEDIATE ... COMMIT`. A lone write
//! goes at once: the writer never waits for company, it only takes what has already arrived (after
//! a large group it lets the tasks it just answered run first, a few `yield_now`s, no timer). While
//! writes come one at a time (the last group was a lone write) and nobody is writing, a caller
//! writes its own write in its own task, as a group of one, instead of handing it to the writer
//! task and waiting to be woken: a lone writer pays no hand-over. Writes arriving meanwhile queue
//! for the writer task, which takes them once that write is done.
//!
//! A group holds at most one append per stream, and appends whose event ids or inbox marks are
//! disjoint; an append that would share one with an earlier append of the group waits for the next
//! group, in order. The appends of a group therefore cannot see each other's writes, and a group is
//! written as if its appends ran one after another in queue order, with few statements: one `SELECT`
//! of the streams' versions and one of the inbox marks (when the group carries any); then, for the
//! appends that passed those checks, their deadline changes in order (an append whose `Fire` is
//! refused is rolled back to its savepoint); for the appends refused by a check, one `SELECT` of the
//! stored events with their ids, since an identical retry or a reused id is what the single-append
//! code reports first; then multi-row inserts of the accepted appends' events, stream versions,
//! inbox marks and outbox intents, and the outbox updates of the group's `mark_published` calls.
//! Each append gets its own result or its own typed error; a refused append writes nothing and does
//! not fail the others. An accepted append whose events are stored already (a retry that passes the
//! version check, `Any` or a reused id) makes the events insert fail on the unique event id: see
//! below.
//!
//! If that fails as a whole for a reason that is not "not now" (a stored event id, a constraint no
//! check foresaw, a corrupt row), it is rolled back and the group is written again one append at a time, each under
//! a savepoint with the single-append code, so every append reports its precise outcome. A failure
//! that is "not now" (disk full, I/O error, the file locked by another process beyond the busy
//! timeout), or a failed commit, fails every write of the group with
//! [`EventStoreError::Unavailable`]; the transaction is rolled back, so no append is half-applied.
//!
//! Positions stay commit-ordered: the one writer connection assigns them inside the file's write
//! lock, and readers see a group's events all at once, when it commits.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use composable_rust_core::event_store::identical_retry;
use composable_rust_core::{AppendRequest, AppendResult, DeadlineChange, EventStoreError, GlobalPosition, RecordedEvent, StoreCause, Topic, Version};
use sqlx::{Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use uuid::Uuid;

use crate::SqliteEventStore;
use crate::store::{EVENT_COLUMNS, apply_deadline_change, event_from_row, map_err, mark_published_on, to_i64, to_u64};

/// The events one group carries at most; an append with more is a group of its own.
const MAX_GROUP_EVENTS: usize = 4096;

/// The rows one multi-row statement carries at most (6 parameters each for events).
const MAX_CHUNK: usize = 64;

/// After a group of more than one write, how many times the writer lets the tasks it answered run
/// (`yield_now`) while that brings new writes, before it writes the next group.
const MAX_YIELDS: usize = 4;

/// How much group commit combined since the store was opened
/// ([`SqliteEventStore::group_commit_stats`]). New fields may be added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupCommitStats {
    /// Group transactions committed.
    pub transactions: u64,
    /// Appends answered by those transactions (including the ones refused by their own checks).
    pub appends: u64,
    /// `mark_published` calls carried by those transactions.
    pub marks: u64,
    /// The most writes (appends and marks) one committed transaction carried.
    pub largest_group: u64,
    /// Groups written again one append at a time because writing them together failed (see the
    /// module docs); each of their appends still got its own outcome.
    pub rewritten_groups: u64,
    /// Groups that failed as a whole (disk full, I/O error, lock timeout, failed commit): each of
    /// their writes got [`EventStoreError::Unavailable`] and none was stored.
    pub failed_groups: u64,
    /// Lone writes their caller wrote in its own task (see the module docs), counted in
    /// `transactions` too.
    pub inline_writes: u64,
}

#[derive(Debug, Default)]
struct Counters {
    transactions: AtomicU64,
    appends: AtomicU64,
    marks: AtomicU64,
    largest_group: AtomicU64,
    rewritten_groups: AtomicU64,
    failed_groups: AtomicU64,
    inline_writes: AtomicU64,
}

type AppendReply = oneshot::Sender<Result<AppendResult, EventStoreError>>;
type MarkReply = oneshot::Sender<Result<(), EventStoreError>>;

/// One write handed to the writer task.
enum Job {
    Append { request: Arc<AppendRequest>, reply: AppendReply },
    Mark { event_id: Uuid, topic: Topic, reply: MarkReply },
}

impl Job {
    /// The caller stopped waiting before anything was written: write nothing.
    fn abandoned(&self) -> bool {
        match self {
            Job::Append { reply, .. } => reply.is_closed(),
            Job::Mark { reply, .. } => reply.is_closed(),
        }
    }
}

/// What the writer task and the callers share.
#[derive(Debug)]
struct Shared {
    /// Held by whoever writes a group: the writer task, or a caller writing its own write inline.
    slot: tokio::sync::Mutex<()>,
    /// Whether the last group was a lone write: callers then write their own write inline when
    /// nobody is writing, in their own task (no hand-over to the writer task and back). Once a group
    /// of more than one forms, writes go to the writer task until it writes a lone one again.
    lone: AtomicBool,
    counters: Counters,
}

/// Handle to the writer task; the task ends when the last handle is dropped.
#[derive(Debug)]
pub(crate) struct GroupCommit {
    jobs: mpsc::UnboundedSender<Job>,
    /// The writer pool: for inline writes, and for a write whose writer is gone.
    pool: SqlitePool,
    shared: Arc<Shared>,
}

impl GroupCommit {
    /// Starts the writer task on the current Tokio runtime.
    pub(crate) fn start(pool: SqlitePool, max_group: usize) -> Self {
        let (jobs, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { slot: tokio::sync::Mutex::new(()), lone: AtomicBool::new(true), counters: Counters::default() });
        tokio::spawn(write_groups(pool.clone(), receiver, max_group.max(1), Arc::clone(&shared)));
        Self { jobs, pool, shared }
    }

    /// Writes `job` as a group of one in the caller's task if the last group was a lone write and
    /// nobody is writing now; gives it back otherwise. A caller that stops waiting drops the write
    /// (its transaction is rolled back unless it was committing), as without group commit.
    async fn try_inline(&self, job: Job) -> Result<(), Job> {
        if !self.shared.lone.load(Ordering::Relaxed) {
            return Err(job);
        }
        let Ok(_slot) = self.shared.slot.try_lock() else { return Err(job) };
        let mut group = Group::default();
        group.offer(job, 1, &mut VecDeque::new());
        group.write(&self.pool, &self.shared.counters).await;
        self.shared.counters.inline_writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `job` inline or hands it to the writer task; `false` if the writer task is gone.
    async fn submit(&self, job: Job) -> bool {
        match self.try_inline(job).await {
            Ok(()) => true,
            Err(job) => self.jobs.send(job).is_ok(),
        }
    }

    pub(crate) fn stats(&self) -> GroupCommitStats {
        let c = &self.shared.counters;
        GroupCommitStats {
            transactions: c.transactions.load(Ordering::Relaxed),
            appends: c.appends.load(Ordering::Relaxed),
            marks: c.marks.load(Ordering::Relaxed),
            largest_group: c.largest_group.load(Ordering::Relaxed),
            rewritten_groups: c.rewritten_groups.load(Ordering::Relaxed),
            failed_groups: c.failed_groups.load(Ordering::Relaxed),
            inline_writes: c.inline_writes.load(Ordering::Relaxed),
        }
    }

    /// Hands a validated `request` to the writer and waits for its result. If the writer is gone
    /// (the runtime that opened the store shut down), the append runs on its own: event ids make
    /// that safe even if the writer had committed it before its answer was lost (an identical retry
    /// is recognised).
    pub(crate) async fn append(&self, request: AppendRequest) -> Result<AppendResult, EventStoreError> {
        let request = Arc::new(request);
        let (reply, answer) = oneshot::channel();
        if self.submit(Job::Append { request: Arc::clone(&request), reply }).await
            && let Ok(result) = answer.await
        {
            return result;
        }
        tracing::debug!(stream = %request.stream_id, "the group writer is gone (its runtime shut down); appending alone");
        SqliteEventStore::append_alone(&self.pool, &request).await
    }

    /// Hands a `mark_published` to the writer and waits until it is committed (or runs it on its
    /// own if the writer is gone).
    pub(crate) async fn mark_published(&self, event_id: Uuid, topic: Topic) -> Result<(), EventStoreError> {
        let (reply, answer) = oneshot::channel();
        if self.submit(Job::Mark { event_id, topic: topic.clone(), reply }).await
            && let Ok(result) = answer.await
        {
            return result;
        }
        mark_published_on(&self.pool, event_id, &topic).await
    }
}

/// The writer task: forms groups from what is queued and writes them, one at a time.
async fn write_groups(pool: SqlitePool, mut jobs: mpsc::UnboundedReceiver<Job>, max_group: usize, shared: Arc<Shared>) {
    // Writes that did not fit the group being formed (their stream, an event id or an inbox mark
    // already in it): they go first into the next group, in order.
    let mut held: VecDeque<Job> = VecDeque::new();
    let mut last_size = 0;
    loop {
        let mut group = Group::default();
        let mut later = VecDeque::new();
        let mut pending = std::mem::take(&mut held);
        while group.is_empty() {
            let job = match pending.pop_front() {
                Some(job) => job,
                None => match jobs.recv().await {
                    Some(job) => job,
                    None => return, // every handle dropped, nothing held
                },
            };
            group.offer(job, max_group, &mut later);
        }
        // Writes queue up meanwhile if a caller is writing inline.
        let slot = shared.slot.lock().await;
        for job in pending {
            group.offer(job, max_group, &mut later);
        }
        group.take_queued(&mut jobs, max_group, &mut later);
        if last_size > 1 {
            // The writers of the last group were just answered and are about to come back: let them
            // run and queue their next writes (no timer: this returns at once when nobody is ready).
            for _ in 0..MAX_YIELDS {
                if group.len() >= max_group {
                    break;
                }
                tokio::task::yield_now().await;
                if group.take_queued(&mut jobs, max_group, &mut later) == 0 {
                    break;
                }
            }
        }
        held = later;
        last_size = group.len();
        group.write(&pool, &shared.counters).await;
        shared.lone.store(last_size == 1, Ordering::Relaxed);
        drop(slot);
    }
}

/// The writes of one transaction.
#[derive(Default)]
struct Group {
    appends: Vec<(Arc<AppendRequest>, AppendReply)>,
    marks: Vec<(Uuid, Topic, MarkReply)>,
    streams: HashSet<String>,
    event_ids: HashSet<Uuid>,
    inbox_marks: HashSet<(String, Uuid)>,
    events: usize,
}

impl Group {
    fn len(&self) -> usize {
        self.appends.len() + self.marks.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes `job` into the group if it fits, else puts it in `later`.
    fn offer(&mut self, job: Job, max_group: usize, later: &mut VecDeque<Job>) {
        if job.abandoned() {
            return;
        }
        if self.len() >= max_group {
            later.push_back(job);
            return;
        }
        match job {
            Job::Mark { event_id, topic, reply } => self.marks.push((event_id, topic, reply)),
            Job::Append { request, reply } => {
                let shares = self.streams.contains(request.stream_id.as_str())
                    || request.events.iter().any(|e| self.event_ids.contains(&e.event_id))
                    || request.inbox.as_ref().is_some_and(|m| self.inbox_marks.contains(&(m.consumer.clone(), m.event_id)));
                let too_big = !self.appends.is_empty() && self.events + request.events.len() > MAX_GROUP_EVENTS;
                if shares || too_big {
                    later.push_back(Job::Append { request, reply });
                    return;
                }
                self.streams.insert(request.stream_id.as_str().to_owned());
                self.event_ids.extend(request.events.iter().map(|e| e.event_id));
                if let Some(m) = &request.inbox {
                    self.inbox_marks.insert((m.consumer.clone(), m.event_id));
                }
                self.events += request.events.len();
                self.appends.push((request, reply));
            }
        }
    }

    /// Takes the writes already queued, while the group has room; how many it took off the queue.
    fn take_queued(&mut self, jobs: &mut mpsc::UnboundedReceiver<Job>, max_group: usize, later: &mut VecDeque<Job>) -> usize {
        let mut taken = 0;
        while self.len() < max_group && later.len() < max_group {
            match jobs.try_recv() {
                Ok(job) => {
                    taken += 1;
                    self.offer(job, max_group, later);
                }
                Err(_) => break,
            }
        }
        taken
    }

    /// Writes the group and answers every write in it.
    async fn write(mut self, pool: &SqlitePool, counters: &Counters) {
        let span = tracing::debug_span!("append_group", store = "sqlite", appends = self.appends.len(), marks = self.marks.len(), events = self.events);
        async {
            let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
                Ok(tx) => tx,
                Err(e) => return self.fail(counters, &map_err(e)),
            };
            // Callers that stopped waiting while the write lock was being taken: nothing of theirs
            // is written. (Once the transaction has begun, a write whose caller goes away may still
            // be committed, as one whose caller goes away during its commit may be without groups.)
            self.appends.retain(|(_, reply)| !reply.is_closed());
            self.marks.retain(|(_, _, reply)| !reply.is_closed());
            if self.is_empty() {
                return; // dropping `tx` rolls the empty transaction back
            }
            let requests: Vec<&AppendRequest> = self.appends.iter().map(|(r, _)| &**r).collect();
            let marks: Vec<(Uuid, &Topic)> = self.marks.iter().map(|(id, topic, _)| (*id, topic)).collect();
            match write_together(&mut tx, &requests, &marks).await {
                Ok(results) => match tx.commit().await {
                    Ok(()) => {
                        let marked = marks.iter().map(|_| Ok(())).collect();
                        self.answer(counters, results, marked);
                    }
                    Err(e) => self.fail(counters, &commit_failed(e)),
                },
                Err(e) if e.is_retryable() => self.fail(counters, &e),
                Err(e) => {
                    drop(tx); // rolled back before the group is written again
                    tracing::debug!(error = %e, "writing the group together failed; writing it again one append at a time");
                    counters.rewritten_groups.fetch_add(1, Ordering::Relaxed);
                    match write_one_by_one(pool, &requests, &marks).await {
                        Ok((results, marked)) => self.answer(counters, results, marked),
                        Err(e) => self.fail(counters, &e),
                    }
                }
            }
        }
        .instrument(span)
        .await;
    }

    fn answer(self, counters: &Counters, results: Vec<Result<AppendResult, EventStoreError>>, marked: Vec<Result<(), EventStoreError>>) {
        counters.transactions.fetch_add(1, Ordering::Relaxed);
        counters.appends.fetch_add(self.appends.len() as u64, Ordering::Relaxed);
        counters.marks.fetch_add(self.marks.len() as u64, Ordering::Relaxed);
        counters.largest_group.fetch_max(self.len() as u64, Ordering::Relaxed);
        for ((_, reply), result) in self.appends.into_iter().zip(results) {
            let _ = reply.send(result);
        }
        for ((_, _, reply), result) in self.marks.into_iter().zip(marked) {
            let _ = reply.send(result);
        }
    }

    fn fail(self, counters: &Counters, error: &EventStoreError) {
        counters.failed_groups.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%error, appends = self.appends.len(), marks = self.marks.len(), "a group of writes failed as a whole; none of it is stored");
        for (_, reply) in self.appends {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, _, reply) in self.marks {
            let _ = reply.send(Err(error.clone()));
        }
    }
}

/// A failed `COMMIT` of a group: retryable, whatever SQLite said.
fn commit_failed(e: sqlx::Error) -> EventStoreError {
    match map_err(e) {
        retryable @ EventStoreError::Unavailable { .. } => retryable,
        other => EventStoreError::unavailable(StoreCause::with_hint(
            other,
            "the commit of the group failed and it was rolled back; retry (an identical retry is recognised)",
        )),
    }
}

/// Where an append of the group stands while the group is written.
enum State {
    /// Answered: a duplicate, or refused by one of its checks (nothing of it is written).
    Done(Result<AppendResult, EventStoreError>),
    /// Refused by a check, unless its events turn out to be stored already (an identical retry, or a
    /// reused id, which the single-append code reports first).
    Refused(EventStoreError),
    /// Passed its checks: to be written on top of `actual`, with its events' metadata as JSON.
    Accepted { actual: Version, metadata: Vec<String> },
}

/// Writes the group in the open transaction `tx` (see the module docs); per append, its outcome.
/// An error is the group's: the caller rolls back and does not commit.
async fn write_together(
    tx: &mut SqliteConnection,
    requests: &[&AppendRequest],
    marks: &[(Uuid, &Topic)],
) -> Result<Vec<Result<AppendResult, EventStoreError>>, EventStoreError> {
    let mut states = Vec::with_capacity(requests.len());
    if !requests.is_empty() {
        let versions = stream_versions(tx, requests).await?;
        let handled = handled_marks(tx, requests).await?;
        states.extend(requests.iter().map(|request| check(request, &versions, &handled)));
        apply_deadlines(tx, requests, &mut states).await?;
        settle_refusals(tx, requests, &mut states).await?;
    }
    let positions = insert_events(tx, requests, &states).await?;
    upsert_streams(tx, requests, &states).await?;
    insert_inbox_marks(tx, requests, &states).await?;
    insert_outbox(tx, requests, &states).await?;
    update_marks(tx, marks).await?;
    requests
        .iter()
        .zip(states)
        .map(|(request, state)| match state {
            State::Done(result) => Ok(result),
            State::Refused(refusal) => Ok(Err(refusal)),
            State::Accepted { actual, .. } => {
                let first_position = positions
                    .get(request.stream_id.as_str())
                    .copied()
                    .ok_or_else(|| EventStoreError::Corrupt { reason: format!("the group insert returned no position for stream {}", request.stream_id) })?;
                Ok(Ok(AppendResult {
                    first_version: actual.next(),
                    next_expected_version: Version(actual.0 + request.events.len() as u64),
                    first_position: GlobalPosition(to_u64(first_position)),
                    duplicate: false,
                }))
            }
        })
        .collect()
}

/// One append's checks after the identical-retry one: the expected version, the inbox mark, the
/// metadata. Whether its events are stored already is settled later, for the refused appends only
/// ([`settle_refusals`]); an accepted append whose events are stored makes the group's insert fail
/// on the unique event id, and the group is then written one append at a time, which checks it
/// first, as alone.
fn check(request: &AppendRequest, versions: &HashMap<String, i64>, handled: &HashSet<(String, Uuid)>) -> State {
    let actual = Version(versions.get(request.stream_id.as_str()).copied().map_or(0, to_u64));
    if !request.expected_version.accepts(actual) {
        return State::Refused(EventStoreError::ConcurrencyConflict { stream_id: request.stream_id.clone(), expected: request.expected_version, actual });
    }
    if let Some(mark) = &request.inbox
        && handled.contains(&(mark.consumer.clone(), mark.event_id))
    {
        return State::Refused(EventStoreError::AlreadyProcessed { consumer: mark.consumer.clone(), event_id: mark.event_id });
    }
    let mut metadata = Vec::with_capacity(request.events.len());
    for event in &request.events {
        match serde_json::to_string(&event.metadata) {
            Ok(json) => metadata.push(json),
            Err(e) => return State::Refused(EventStoreError::InvalidRequest { reason: format!("metadata of {}: {e}", event.event_id) }),
        }
    }
    State::Accepted { actual, metadata }
}

/// The refused appends whose events are stored already are identical retries (answered with the
/// earlier result) or reuse an id ([`EventStoreError::EventIdReused`]), as the single-append code,
/// which checks that first, says; the others keep their refusal. One `SELECT`, only when an append
/// was refused.
async fn settle_refusals(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &mut [State]) -> Result<(), EventStoreError> {
    let refused: Vec<&AppendRequest> = requests.iter().zip(states.iter()).filter(|(_, s)| matches!(s, State::Refused(_))).map(|(r, _)| *r).collect();
    if refused.is_empty() {
        return Ok(());
    }
    let mut stored = stored_events(tx, &refused).await?;
    for (request, state) in requests.iter().zip(states.iter_mut()) {
        let State::Refused(refusal) = state else { continue };
        // The group's appends have disjoint event ids: what is stored under these ids is this one's.
        let mut mine: Vec<RecordedEvent> = request.events.iter().filter_map(|e| stored.remove(&e.event_id)).collect();
        mine.sort_by_key(|e| e.position);
        let settled = match identical_retry(request, &mine) {
            Ok(Some(earlier)) => Ok(earlier),
            Err(e) => Err(e),
            Ok(None) => Err(refusal.clone()),
        };
        *state = State::Done(settled);
    }
    Ok(())
}

/// The deadline changes of the accepted appends, in group order (as if each ran alone, after the
/// ones before it). An append whose `Fire` is refused is refused whole: its earlier changes are
/// rolled back to a savepoint (none is needed when the refused `Fire` is its first change).
async fn apply_deadlines(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &mut [State]) -> Result<(), EventStoreError> {
    for (request, state) in requests.iter().zip(states.iter_mut()) {
        if request.deadlines.is_empty() || !matches!(state, State::Accepted { .. }) {
            continue;
        }
        let guarded = request.deadlines.iter().skip(1).any(|c| matches!(c, DeadlineChange::Fire { .. }));
        if guarded {
            execute(tx, "SAVEPOINT group_append").await?;
        }
        let mut refused = None;
        for change in &request.deadlines {
            match apply_deadline_change(tx, change).await {
                Ok(()) => {}
                Err(e @ EventStoreError::DeadlineNotPending { .. }) => {
                    refused = Some(e);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if guarded {
            if refused.is_some() {
                execute(tx, "ROLLBACK TO group_append").await?;
            }
            execute(tx, "RELEASE group_append").await?;
        }
        if let Some(e) = refused {
            *state = State::Refused(e);
        }
    }
    Ok(())
}

async fn execute(tx: &mut SqliteConnection, sql: &'static str) -> Result<(), EventStoreError> {
    sqlx::query(sql).execute(&mut *tx).await.map_err(map_err)?;
    Ok(())
}

/// The stored events carrying any of the group's event ids, by id.
async fn stored_events(tx: &mut SqliteConnection, requests: &[&AppendRequest]) -> Result<HashMap<Uuid, RecordedEvent>, EventStoreError> {
    let ids: Vec<&[u8]> = requests.iter().flat_map(|r| r.events.iter().map(|e| &e.event_id.as_bytes()[..])).collect();
    let mut stored = HashMap::new();
    for chunk in padded_chunks(&ids) {
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN ({})", placeholders(chunk.len(), 1));
        let rows = chunk.iter().fold(sqlx::query(&sql), |q, id| q.bind(*id)).fetch_all(&mut *tx).await.map_err(map_err)?;
        for row in &rows {
            let event = event_from_row(row)?;
            stored.insert(event.event.event_id, event);
        }
    }
    Ok(stored)
}

/// The versions of the group's streams that exist, by stream id.
async fn stream_versions(tx: &mut SqliteConnection, requests: &[&AppendRequest]) -> Result<HashMap<String, i64>, EventStoreError> {
    let streams: Vec<&str> = requests.iter().map(|r| r.stream_id.as_str()).collect();
    let mut versions = HashMap::with_capacity(streams.len());
    for chunk in padded_chunks(&streams) {
        let sql = format!("SELECT stream_id, version FROM streams WHERE stream_id IN ({})", placeholders(chunk.len(), 1));
        let rows = chunk.iter().fold(sqlx::query(&sql), |q, s| q.bind(*s)).fetch_all(&mut *tx).await.map_err(map_err)?;
        for row in &rows {
            let stream: String = row.try_get(0).map_err(|e| corrupt("stream row", e))?;
            versions.insert(stream, row.try_get(1).map_err(|e| corrupt("stream row", e))?);
        }
    }
    Ok(versions)
}

/// The group's inbox marks that are already stored.
async fn handled_marks(tx: &mut SqliteConnection, requests: &[&AppendRequest]) -> Result<HashSet<(String, Uuid)>, EventStoreError> {
    let marks: Vec<(&str, &[u8])> = requests.iter().filter_map(|r| r.inbox.as_ref().map(|m| (m.consumer.as_str(), &m.event_id.as_bytes()[..]))).collect();
    let mut handled = HashSet::new();
    for chunk in padded_chunks(&marks) {
        let sql = format!("SELECT consumer, event_id FROM inbox WHERE (consumer, event_id) IN (VALUES {})", placeholders(chunk.len(), 2));
        let rows = chunk.iter().fold(sqlx::query(&sql), |q, (c, id)| q.bind(*c).bind(*id)).fetch_all(&mut *tx).await.map_err(map_err)?;
        for row in &rows {
            let consumer: String = row.try_get(0).map_err(|e| corrupt("inbox row", e))?;
            let id: Vec<u8> = row.try_get(1).map_err(|e| corrupt("inbox row", e))?;
            handled.insert((consumer, Uuid::from_slice(&id).map_err(|e| corrupt("inbox event id", e))?));
        }
    }
    Ok(handled)
}

/// The accepted appends with what `each` gives for them.
fn accepted<'a>(requests: &'a [&'a AppendRequest], states: &'a [State]) -> impl Iterator<Item = (&'a AppendRequest, Version, &'a [String])> {
    requests.iter().zip(states).filter_map(|(r, s)| match s {
        State::Accepted { actual, metadata } => Some((*r, *actual, metadata.as_slice())),
        State::Done(_) | State::Refused(_) => None,
    })
}

/// One events row.
struct EventRow<'a> {
    stream: &'a str,
    version: i64,
    id: &'a [u8],
    event_type: &'a str,
    payload: &'a [u8],
    metadata: &'a str,
}

/// Inserts the accepted appends' events; the first position of each stream written.
async fn insert_events(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &[State]) -> Result<HashMap<String, i64>, EventStoreError> {
    let mut rows = Vec::new();
    for (request, actual, metadata) in accepted(requests, states) {
        for ((k, event), metadata) in (1_u64..).zip(&request.events).zip(metadata) {
            rows.push(EventRow {
                stream: request.stream_id.as_str(),
                version: to_i64(actual.0 + k),
                id: &event.event_id.as_bytes()[..],
                event_type: event.event_type.as_str(),
                payload: &event.data[..],
                metadata: metadata.as_str(),
            });
        }
    }
    let mut first_positions: HashMap<String, i64> = HashMap::new();
    for chunk in chunks(&rows) {
        let sql = format!(
            "INSERT INTO events (stream_id, stream_version, event_id, event_type, payload, metadata) VALUES {} RETURNING global_position, stream_id",
            placeholders(chunk.len(), 6)
        );
        let query =
            chunk.iter().fold(sqlx::query(&sql), |q, r| q.bind(r.stream).bind(r.version).bind(r.id).bind(r.event_type).bind(r.payload).bind(r.metadata));
        for row in query.fetch_all(&mut *tx).await.map_err(map_err)? {
            let position: i64 = row.try_get(0).map_err(|e| corrupt("inserted event", e))?;
            let stream: String = row.try_get(1).map_err(|e| corrupt("inserted event", e))?;
            first_positions.entry(stream).and_modify(|p| *p = (*p).min(position)).or_insert(position);
        }
    }
    Ok(first_positions)
}

async fn upsert_streams(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &[State]) -> Result<(), EventStoreError> {
    let rows: Vec<(&str, i64)> = accepted(requests, states).map(|(r, actual, _)| (r.stream_id.as_str(), to_i64(actual.0 + r.events.len() as u64))).collect();
    for chunk in chunks(&rows) {
        let sql = format!(
            "INSERT INTO streams (stream_id, version) VALUES {} ON CONFLICT (stream_id) DO UPDATE SET version = excluded.version",
            placeholders(chunk.len(), 2)
        );
        chunk.iter().fold(sqlx::query(&sql), |q, (s, v)| q.bind(*s).bind(*v)).execute(&mut *tx).await.map_err(map_err)?;
    }
    Ok(())
}

async fn insert_inbox_marks(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &[State]) -> Result<(), EventStoreError> {
    let rows: Vec<(&str, &[u8])> =
        accepted(requests, states).filter_map(|(r, _, _)| r.inbox.as_ref().map(|m| (m.consumer.as_str(), &m.event_id.as_bytes()[..]))).collect();
    for chunk in chunks(&rows) {
        // Checked absent above, and the group's marks are distinct: a conflict here is an error.
        let sql = format!("INSERT INTO inbox (consumer, event_id) VALUES {}", placeholders(chunk.len(), 2));
        chunk.iter().fold(sqlx::query(&sql), |q, (c, id)| q.bind(*c).bind(*id)).execute(&mut *tx).await.map_err(map_err)?;
    }
    Ok(())
}

async fn insert_outbox(tx: &mut SqliteConnection, requests: &[&AppendRequest], states: &[State]) -> Result<(), EventStoreError> {
    let rows: Vec<(&[u8], &str)> =
        accepted(requests, states).flat_map(|(r, _, _)| r.outbox.iter().map(|o| (&o.event_id.as_bytes()[..], o.topic.as_str()))).collect();
    for chunk in chunks(&rows) {
        let sql = format!("INSERT INTO outbox (event_id, topic) VALUES {} ON CONFLICT (event_id, topic) DO NOTHING", placeholders(chunk.len(), 2));
        chunk.iter().fold(sqlx::query(&sql), |q, (id, t)| q.bind(*id).bind(*t)).execute(&mut *tx).await.map_err(map_err)?;
    }
    Ok(())
}

/// The group's `mark_published` calls: one `UPDATE` (marking an unknown or published entry does
/// nothing, as alone).
async fn update_marks(tx: &mut SqliteConnection, marks: &[(Uuid, &Topic)]) -> Result<(), EventStoreError> {
    let rows: Vec<(&[u8], &str)> = marks.iter().map(|(id, topic)| (&id.as_bytes()[..], topic.as_str())).collect();
    for chunk in padded_chunks(&rows) {
        let sql = format!(
            "UPDATE outbox SET published_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE published_at IS NULL AND (event_id, topic) IN (VALUES {})",
            placeholders(chunk.len(), 2)
        );
        chunk.iter().fold(sqlx::query(&sql), |q, (id, t)| q.bind(*id).bind(*t)).execute(&mut *tx).await.map_err(map_err)?;
    }
    Ok(())
}

/// The group written one append at a time in one transaction, each under a savepoint with the
/// single-append code; the marks after them, under one savepoint. An error is the group's (nothing
/// committed).
#[allow(clippy::type_complexity)]
async fn write_one_by_one(
    pool: &SqlitePool,
    requests: &[&AppendRequest],
    marks: &[(Uuid, &Topic)],
) -> Result<(Vec<Result<AppendResult, EventStoreError>>, Vec<Result<(), EventStoreError>>), EventStoreError> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        execute(&mut tx, "SAVEPOINT group_append").await?;
        let result = SqliteEventStore::append_on(&mut tx, request).await;
        match &result {
            Err(e) if e.is_retryable() => return Err(e.clone()),
            Err(_) => execute(&mut tx, "ROLLBACK TO group_append").await?,
            Ok(_) => {}
        }
        execute(&mut tx, "RELEASE group_append").await?;
        results.push(result);
    }
    let mut marked = Ok(());
    if !marks.is_empty() {
        execute(&mut tx, "SAVEPOINT group_marks").await?;
        marked = update_marks(&mut tx, marks).await;
        match &marked {
            Err(e) if e.is_retryable() => return Err(e.clone()),
            Err(_) => execute(&mut tx, "ROLLBACK TO group_marks").await?,
            Ok(()) => {}
        }
        execute(&mut tx, "RELEASE group_marks").await?;
    }
    tx.commit().await.map_err(commit_failed)?;
    Ok((results, marks.iter().map(|_| marked.clone()).collect()))
}

fn corrupt(what: &str, reason: impl std::fmt::Display) -> EventStoreError {
    EventStoreError::Corrupt { reason: format!("{what}: {reason}") }
}

/// `rows` groups of `columns` placeholders: `(?, ?), (?, ?)`; with one column, `?, ?`.
fn placeholders(rows: usize, columns: usize) -> String {
    let row = if columns == 1 { "?".to_owned() } else { format!("({})", vec!["?"; columns].join(", ")) };
    vec![row; rows].join(", ")
}

/// `items` in runs of at most `MAX_CHUNK` rows: one statement per table for a whole group of up to
/// 64 single-event appends. Each row count is a statement shape of its own, which the writer
/// connection keeps prepared (`WRITER_STATEMENT_CACHE` holds them all).
fn chunks<T>(items: &[T]) -> std::slice::Chunks<'_, T> {
    items.chunks(MAX_CHUNK)
}

/// `items` in runs of at most `MAX_CHUNK`, each padded to a power of two by repeating its last item:
/// for `IN` lists, where a repeated value changes nothing, so one statement of one of a few shapes
/// does.
fn padded_chunks<T: Copy>(items: &[T]) -> impl Iterator<Item = Vec<T>> {
    items.chunks(MAX_CHUNK).map(|chunk| {
        let mut padded = chunk.to_vec();
        if let Some(last) = chunk.last() {
            padded.resize(chunk.len().next_power_of_two(), *last);
        }
        padded
    })
}

#[cfg(test)]
mod tests {
    use composable_rust_core::{EventStore, ExpectedVersion, SerializedEvent, StreamId};
    use sqlx::ConnectOptions;

    use super::*;

    /// A full disk, as SQLite sees it: the writer connection may not grow the file past a few more
    /// pages (`PRAGMA max_page_count`), and a group needs more. Every write of the failing group is
    /// refused as retryable and none of it is stored; once there is room, the same writes go through.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_disk_fails_every_write_of_the_group_and_stores_none_of_it() {
        let path = std::env::temp_dir().join(format!("cr-sqlite-full-{}.db", Uuid::new_v4().simple()));
        let store = SqliteEventStore::open(&path).await.expect("open");
        let stream = |i: usize| StreamId::new(format!("full-{i}")).expect("stream id");
        let request = |i: usize| AppendRequest::new(stream(i), ExpectedVersion::NoStream, vec![SerializedEvent::new("Big.v1", vec![7u8; 8192], None)]);
        store.append(request(100)).await.expect("a first append");
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(&store.writer).await.expect("page count");
        sqlx::query(&format!("PRAGMA max_page_count = {}", pages + 4)).execute(&store.writer).await.expect("limit the file");

        // Queue 16 appends behind a lock held elsewhere, so that they form one or two groups.
        let mut blocker = sqlx::sqlite::SqliteConnectOptions::new().filename(&path).connect().await.expect("blocker");
        sqlx::query("BEGIN IMMEDIATE").execute(&mut blocker).await.expect("lock");
        let mut pending = Vec::new();
        for i in 0..16 {
            let mut f = Box::pin(store.append(request(i)));
            assert!(futures_poll_once(f.as_mut()).await.is_none(), "queued behind the lock");
            pending.push(f);
        }
        let topic = Topic::new("t").expect("topic");
        let mut mark = Box::pin(store.mark_published(Uuid::new_v4(), &topic));
        assert!(futures_poll_once(mark.as_mut()).await.is_none());
        sqlx::query("COMMIT").execute(&mut blocker).await.expect("unlock");
        let mut failed = Vec::new();
        for (i, f) in pending.into_iter().enumerate() {
            match f.await {
                Ok(r) => assert_eq!(store.stream_version(&stream(i)).await.expect("version"), r.next_expected_version, "append {i} is stored whole"),
                Err(e) => {
                    assert!(e.is_retryable() && e.to_string().contains("full") && e.to_string().contains("free disk space"), "append {i}: {e}");
                    assert_eq!(store.stream_version(&stream(i)).await.expect("version"), Version(0), "append {i} is not stored");
                    failed.push(i);
                }
            }
        }
        let stats = store.group_commit_stats();
        assert!(failed.len() >= 8, "a group of at least 8 appends did not fit: {failed:?} {stats:?}");
        assert!(stats.failed_groups >= 1 && (failed.len() as u64) > stats.failed_groups, "whole groups failed: {stats:?}");
        if let Err(e) = mark.await {
            assert!(e.is_retryable(), "a mark in a failed group fails retryably: {e}");
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&store.reader).await.expect("count");
        assert_eq!(usize::try_from(count).expect("a count"), 17 - failed.len(), "no event of a failed append is stored");

        sqlx::query("PRAGMA max_page_count = 1073741823").execute(&store.writer).await.expect("room again");
        for i in failed {
            store.append(request(i)).await.unwrap_or_else(|e| panic!("append {i} once there is room: {e}"));
        }
        drop(store);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// Polls `f` once: `Some` if it finished.
    async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            })
        })
        .await
    }

    #[test]
    fn statements_take_a_few_shapes() {
        let sizes = |n: usize| chunks(&vec![0; n]).map(<[i32]>::len).collect::<Vec<_>>();
        assert_eq!(sizes(0), Vec::<usize>::new());
        assert_eq!(sizes(1), [1]);
        assert_eq!(sizes(31), [31]);
        assert_eq!(sizes(150), [64, 64, 22]);
        let padded = |n: usize| padded_chunks(&(0..n).collect::<Vec<_>>()).collect::<Vec<_>>();
        assert_eq!(padded(3), [vec![0, 1, 2, 2]]);
        assert_eq!(padded(66).iter().map(Vec::len).collect::<Vec<_>>(), [64, 2]);
        assert!(padded(0).is_empty());
        assert_eq!(placeholders(2, 2), "(?, ?), (?, ?)");
        assert_eq!(placeholders(3, 1), "?, ?, ?");
    }
}
