//! A saga step with a compensation: reserve a seat, then charge the card; when the charge is
//! rejected (a typed rejection fed back through `on_error`), release the seat. Tested as data and
//! through `TestStore` with a payment handler that declines.
//! Run: `cargo run -p composable-rust-basics --example compensation`.

use composable_rust_core::{Dispatch, DispatchError, Effect, Effects, Reducer, smallvec};

/// Commands are routed by type: each of these goes to its own handler.
#[derive(Debug, Clone, PartialEq)]
struct Reserve {
    seat: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct Charge {
    cents: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Release {
    seat: u32,
}

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Book { seat: u32, cents: u64 },
    ChargeFailed(String),
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Booking {
    seat: u32,
    released: bool,
}

struct BookingSaga;

impl Reducer for BookingSaga {
    type State = Booking;
    type Action = Action;
    type Environment = ();

    fn reduce(&self, b: &mut Booking, action: Action, (): &()) -> Effects<Action> {
        match action {
            Action::Book { seat, cents } => {
                b.seat = seat;
                // In order: the charge only runs once the seat is reserved.
                let charge = Dispatch::new(Charge { cents }).on_error(|e: DispatchError| Action::ChargeFailed(e.to_string()));
                smallvec![Effect::dispatch(Reserve { seat }), charge.into()]
            }
            Action::ChargeFailed(_) => {
                b.released = true;
                smallvec![Effect::dispatch(Release { seat: b.seat })]
            }
        }
    }
}

fn main() {
    let mut booking = Booking::default();
    let effects = BookingSaga.reduce(&mut booking, Action::Book { seat: 7, cents: 900 }, &());
    println!("booking: {effects:?}");
    let effects = BookingSaga.reduce(&mut booking, Action::ChargeFailed("card declined".into()), &());
    println!("on a failed charge: {effects:?}");
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use composable_rust_core::{CommandEnvelope, CommandHandler, CommandOutcome, Rejection};
    use composable_rust_testing::TestStore;

    #[derive(Debug, thiserror::Error)]
    #[error("card declined")]
    struct Declined;

    /// A payment provider that declines every charge.
    struct Declining;

    #[async_trait::async_trait]
    impl CommandHandler for Declining {
        fn name(&self) -> &'static str {
            "payments"
        }
        async fn handle(&self, _: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
            Err(DispatchError::Rejected { target: "payments".into(), error: Rejection(Arc::new(Declined)) })
        }
    }

    #[test]
    fn a_failed_charge_releases_the_seat() {
        let mut booking = Booking { seat: 7, released: false };
        let effects = BookingSaga.reduce(&mut booking, Action::ChargeFailed("declined".into()), &());
        assert_eq!(effects.into_vec(), vec![Effect::dispatch(Release { seat: 7 })]);
        assert!(booking.released);
    }

    #[tokio::test]
    async fn the_rejection_comes_back_and_the_compensation_is_dispatched() {
        let mut store = TestStore::new(Booking::default(), BookingSaga, ());
        store.commands().register::<Charge>(Arc::new(Declining)).unwrap();
        store.send(Action::Book { seat: 7, cents: 900 }, |b| b.seat = 7);
        store.receive(Action::ChargeFailed("payments rejected the command: card declined".into()), |b| b.released = true).await;
        store.settle().await;
        assert_eq!(store.dispatched(), vec!["Reserve { seat: 7 }".to_string(), "Release { seat: 7 }".to_string()], "reserved, then released");
        store.finish().await;
    }
}
