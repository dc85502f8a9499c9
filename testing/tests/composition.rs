//! A parent feature built from a scoped child, a `ForEach` collection of children and an optional
//! child, tested exhaustively with `TestStore`: each child's effects come back as the parent's
//! actions, and cancelling one child's timer leaves its siblings' running.

use std::collections::BTreeMap;
use std::time::Duration;

use composable_rust_core::{Effect, Effects, ForEach, IfLet, Reducer, Scope, combine, smallvec};
use composable_rust_testing::TestStore;

/// A countdown: `Start` schedules a `Tick` every second until stopped; `Stop` cancels it. Its
/// cancellation id is the same string in every instance: composition must keep them apart.
struct Countdown;

#[derive(Debug, Clone, PartialEq, Default)]
struct Timer {
    ticks: u32,
    running: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum TimerAction {
    Start,
    Tick,
    Stop,
}

impl Reducer for Countdown {
    type State = Timer;
    type Action = TimerAction;
    type Environment = Duration;

    fn reduce(&self, state: &mut Timer, action: TimerAction, period: &Duration) -> Effects<TimerAction> {
        match action {
            TimerAction::Start => {
                state.running = true;
                smallvec![Effect::delay(*period, TimerAction::Tick).cancel_in_flight("tick")]
            }
            TimerAction::Tick if state.running => {
                state.ticks += 1;
                smallvec![Effect::delay(*period, TimerAction::Tick).cancel_in_flight("tick")]
            }
            TimerAction::Tick => smallvec![],
            TimerAction::Stop => {
                state.running = false;
                smallvec![Effect::cancel("tick")]
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default)]
struct App {
    header: Timer,
    rows: BTreeMap<u32, Timer>,
    detail: Option<Timer>,
    missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum AppAction {
    Header(TimerAction),
    Row(u32, TimerAction),
    Detail(TimerAction),
    NoSuchRow(u32),
    NoDetail,
    OpenDetail,
}

struct Env {
    period: Duration,
}

fn header(a: AppAction) -> Result<TimerAction, AppAction> {
    if let AppAction::Header(t) = a { Ok(t) } else { Err(a) }
}

fn row(a: AppAction) -> Result<(u32, TimerAction), AppAction> {
    if let AppAction::Row(k, t) = a { Ok((k, t)) } else { Err(a) }
}

fn detail(a: AppAction) -> Result<TimerAction, AppAction> {
    if let AppAction::Detail(t) = a { Ok(t) } else { Err(a) }
}

/// The parent's own logic: opening the detail and recording actions for absent children.
struct AppCore;

impl Reducer for AppCore {
    type State = App;
    type Action = AppAction;
    type Environment = Env;

    fn reduce(&self, state: &mut App, action: AppAction, _: &Env) -> Effects<AppAction> {
        match action {
            AppAction::OpenDetail => state.detail = Some(Timer::default()),
            AppAction::NoSuchRow(k) => state.missing.push(format!("row {k}")),
            AppAction::NoDetail => state.missing.push("detail".into()),
            _ => {}
        }
        smallvec![]
    }
}

fn app() -> impl Reducer<State = App, Action = AppAction, Environment = Env> {
    combine(
        combine(AppCore, Scope::new("header", Countdown, |s: &mut App| &mut s.header, |e: &Env| &e.period, header, AppAction::Header)),
        combine(
            ForEach::new("rows", Countdown, |s: &mut App| &mut s.rows, |e: &Env| &e.period, row, AppAction::Row, AppAction::NoSuchRow),
            IfLet::new("detail", Countdown, |s: &mut App| &mut s.detail, |e: &Env| &e.period, detail, AppAction::Detail, || AppAction::NoDetail),
        ),
    )
}

fn rows(keys: &[u32]) -> BTreeMap<u32, Timer> {
    keys.iter().map(|k| (*k, Timer::default())).collect()
}

#[tokio::test]
async fn children_run_in_place_and_never_cancel_each_other() {
    let second = Duration::from_secs(1);
    let mut store = TestStore::new(App { rows: rows(&[1, 2]), ..App::default() }, app(), Env { period: second });

    store.send(AppAction::Header(TimerAction::Start), |s| s.header.running = true);
    store.send(AppAction::Row(1, TimerAction::Start), |s| s.rows.get_mut(&1).unwrap().running = true);
    store.send(AppAction::Row(2, TimerAction::Start), |s| s.rows.get_mut(&2).unwrap().running = true);
    store.send(AppAction::OpenDetail, |s| s.detail = Some(Timer::default()));
    store.send(AppAction::Detail(TimerAction::Start), |s| s.detail.as_mut().unwrap().running = true);

    store.advance(second).await;
    // Timers started in that order come due in that order.
    store.receive(AppAction::Header(TimerAction::Tick), |s| s.header.ticks = 1).await;
    store.receive(AppAction::Row(1, TimerAction::Tick), |s| s.rows.get_mut(&1).unwrap().ticks = 1).await;
    store.receive(AppAction::Row(2, TimerAction::Tick), |s| s.rows.get_mut(&2).unwrap().ticks = 1).await;
    store.receive(AppAction::Detail(TimerAction::Tick), |s| s.detail.as_mut().unwrap().ticks = 1).await;

    // Row 1 cancels its "tick": the header, row 2 and the detail use the same id and keep ticking.
    store.send(AppAction::Row(1, TimerAction::Stop), |s| s.rows.get_mut(&1).unwrap().running = false);
    store.advance(second).await;
    store.receive(AppAction::Header(TimerAction::Tick), |s| s.header.ticks = 2).await;
    store.receive(AppAction::Row(2, TimerAction::Tick), |s| s.rows.get_mut(&2).unwrap().ticks = 2).await;
    store.receive(AppAction::Detail(TimerAction::Tick), |s| s.detail.as_mut().unwrap().ticks = 2).await;

    for stop in [AppAction::Header(TimerAction::Stop), AppAction::Row(2, TimerAction::Stop), AppAction::Detail(TimerAction::Stop)] {
        store.send(stop.clone(), |s| match stop {
            AppAction::Header(_) => s.header.running = false,
            AppAction::Row(k, _) => s.rows.get_mut(&k).unwrap().running = false,
            _ => s.detail.as_mut().unwrap().running = false,
        });
    }
    store.advance(second * 5).await;
    assert_eq!(store.clock().pending_sleepers(), 0, "every timer was cancelled and left the clock");
    store.finish().await;
}

#[tokio::test]
async fn actions_for_absent_children_come_back_as_actions() {
    let mut store = TestStore::new(App { rows: rows(&[1]), ..App::default() }, app(), Env { period: Duration::from_secs(1) });
    store.send(AppAction::Row(7, TimerAction::Start), |_| {});
    store.receive(AppAction::NoSuchRow(7), |s| s.missing.push("row 7".into())).await;
    store.send(AppAction::Detail(TimerAction::Start), |_| {});
    store.receive(AppAction::NoDetail, |s| s.missing.push("detail".into())).await;
    store.finish().await;
}
