//! A typed aggregate: `handle` decides (events, or a typed rejection), `apply` is the only code that
//! changes the state. Tested given/when/then, then run on an in-memory store, where an overdraft
//! comes back to the caller as the aggregate's own error.
//! Run: `cargo run -p composable-rust-basics --example bank_account`.

use std::sync::Arc;

use composable_rust_core::{Aggregate, DomainEvent};
use composable_rust_memory::InMemoryEventStore;
use composable_rust_runtime::{AggregateError, AggregateHandler, Executor};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Deposit { account: String, cents: u64 },
    Withdraw { account: String, cents: u64 },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Event {
    Deposited { cents: u64 },
    Withdrawn { cents: u64 },
}

impl DomainEvent for Event {
    fn event_type(&self) -> &'static str {
        match self {
            Event::Deposited { .. } => "Deposited.v1",
            Event::Withdrawn { .. } => "Withdrawn.v1",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
enum AccountError {
    #[error("balance {balance} cannot cover a withdrawal of {cents}")]
    Overdraft { balance: u64, cents: u64 },
    #[error("an amount must be positive")]
    ZeroAmount,
}

struct Account;

impl Aggregate for Account {
    const AGGREGATE_TYPE: &'static str = "account";
    type State = u64;
    type Command = Command;
    type Event = Event;
    type Error = AccountError;
    type Environment = ();

    fn aggregate_id(command: &Command) -> &str {
        match command {
            Command::Deposit { account, .. } | Command::Withdraw { account, .. } => account,
        }
    }

    fn initial_state(_id: &str) -> u64 {
        0
    }

    fn handle(&self, balance: &u64, command: Command, (): &()) -> Result<Vec<Event>, AccountError> {
        match command {
            Command::Deposit { cents: 0, .. } | Command::Withdraw { cents: 0, .. } => Err(AccountError::ZeroAmount),
            Command::Deposit { cents, .. } => Ok(vec![Event::Deposited { cents }]),
            Command::Withdraw { cents, .. } if cents > *balance => Err(AccountError::Overdraft { balance: *balance, cents }),
            Command::Withdraw { cents, .. } => Ok(vec![Event::Withdrawn { cents }]),
        }
    }

    fn apply(balance: &mut u64, event: &Event) {
        match event {
            Event::Deposited { cents } => *balance += cents,
            Event::Withdrawn { cents } => *balance -= cents,
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let executor = Executor::builder().store(Arc::new(InMemoryEventStore::new())).build();
    let accounts = AggregateHandler::new(Account, (), executor);
    let acc = || "alice".to_string();
    accounts.send(Command::Deposit { account: acc(), cents: 100 }).await.expect("a deposit is accepted");
    match accounts.send(Command::Withdraw { account: acc(), cents: 250 }).await {
        Err(AggregateError::Rejected(e)) => println!("refused: {e}"),
        other => println!("unexpected: {other:?}"),
    }
    let balance = accounts.load("alice", None).await.expect("the stream loads").state;
    println!("balance = {balance}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use composable_rust_testing::AggregateScenario;

    fn scenario() -> AggregateScenario<Account> {
        AggregateScenario::new(Account, (), "alice")
    }

    #[test]
    fn withdrawals_are_covered_or_refused() {
        let withdraw = |cents| Command::Withdraw { account: "alice".into(), cents };
        scenario().given([Event::Deposited { cents: 100 }]).when(withdraw(30)).then_events(&[Event::Withdrawn { cents: 30 }]).then_state(&70);
        scenario().given([Event::Deposited { cents: 10 }]).when(withdraw(30)).then_rejected(&AccountError::Overdraft { balance: 10, cents: 30 });
        scenario().when(withdraw(0)).then_rejected(&AccountError::ZeroAmount);
    }

    #[tokio::test]
    async fn the_caller_gets_the_typed_rejection_and_nothing_is_stored() {
        let store = Arc::new(InMemoryEventStore::new());
        let accounts = AggregateHandler::new(Account, (), Executor::builder().store(store.clone()).build());
        let refused = accounts.send(Command::Withdraw { account: "bob".into(), cents: 5 }).await;
        assert!(matches!(refused, Err(AggregateError::Rejected(AccountError::Overdraft { balance: 0, cents: 5 }))), "{refused:?}");
        assert_eq!(store.event_count(), 0);
    }
}
