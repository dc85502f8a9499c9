//! A small bank shared by the tests of this directory: an `Account` aggregate (deposits,
//! withdrawals refused on overdraft, idempotent credits of transfers) and command handlers that
//! record what they were sent.

#![allow(dead_code)]

use std::collections::BTreeSet;

use composable_rust_core::{Aggregate, CodecError, CommandEnvelope, CommandHandler, CommandOutcome, DispatchError, DomainEvent, Topic, encode_payload};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The topic account events are published to.
pub const ACCOUNT_EVENTS: &str = "bank.accounts";

/// Commands of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountCommand {
    /// Adds money.
    Deposit { account: String, amount: u64 },
    /// Takes money out; refused beyond the balance.
    Withdraw { account: String, amount: u64 },
    /// Credits the money of a transfer (once per transfer).
    Credit { account: String, transfer: String, amount: u64 },
}

/// Events of an account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountEvent {
    Deposited { amount: u64 },
    Withdrawn { amount: u64 },
    Credited { transfer: String, amount: u64 },
}

impl DomainEvent for AccountEvent {
    fn event_type(&self) -> &'static str {
        match self {
            AccountEvent::Deposited { .. } => "Deposited.v1",
            AccountEvent::Withdrawn { .. } => "Withdrawn.v1",
            AccountEvent::Credited { .. } => "Credited.v1",
        }
    }
}

/// Why an account refuses a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// Not enough money.
    #[error("overdraft: the balance is {balance}, {requested} requested")]
    Overdraft { balance: u64, requested: u64 },
}

/// The state of an account.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AccountState {
    pub id: String,
    pub balance: u64,
    pub credited: BTreeSet<String>,
    pub events: u64,
}

/// The aggregate. Snapshots every `SNAPSHOT_EVERY` events, so that loading goes through them too.
pub struct Account;

impl Aggregate for Account {
    const AGGREGATE_TYPE: &'static str = "account";
    type State = AccountState;
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;
    type Environment = ();

    fn aggregate_id(command: &AccountCommand) -> &str {
        match command {
            AccountCommand::Deposit { account, .. } | AccountCommand::Withdraw { account, .. } | AccountCommand::Credit { account, .. } => account,
        }
    }

    fn initial_state(id: &str) -> AccountState {
        AccountState { id: id.to_string(), ..AccountState::default() }
    }

    fn handle(&self, state: &AccountState, command: AccountCommand, (): &()) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Deposit { amount: 0, .. } => Ok(vec![]),
            AccountCommand::Deposit { amount, .. } => Ok(vec![AccountEvent::Deposited { amount }]),
            AccountCommand::Withdraw { amount, .. } if amount > state.balance => Err(AccountError::Overdraft { balance: state.balance, requested: amount }),
            AccountCommand::Withdraw { amount, .. } => Ok(vec![AccountEvent::Withdrawn { amount }]),
            AccountCommand::Credit { transfer, .. } if state.credited.contains(&transfer) => Ok(vec![]),
            AccountCommand::Credit { transfer, amount, .. } => Ok(vec![AccountEvent::Credited { transfer, amount }]),
        }
    }

    fn apply(state: &mut AccountState, event: &AccountEvent) {
        state.events += 1;
        match event {
            AccountEvent::Deposited { amount } => state.balance += amount,
            AccountEvent::Withdrawn { amount } => state.balance -= amount,
            AccountEvent::Credited { transfer, amount } => {
                state.balance += amount;
                state.credited.insert(transfer.clone());
            }
        }
    }

    fn topic() -> Option<Topic> {
        Some(Topic::new(ACCOUNT_EVENTS).expect("valid topic"))
    }

    fn encode_state(state: &AccountState) -> Option<Result<bytes::Bytes, CodecError>> {
        Some(encode_payload(state))
    }

    fn decode_state(bytes: &[u8]) -> Result<AccountState, CodecError> {
        composable_rust_core::decode_payload(bytes)
    }

    fn snapshot_every() -> u64 {
        3
    }
}

/// Records every command it handles (`Debug`-rendered) with its id, and answers `Duplicate` for an
/// id it has seen.
#[derive(Default)]
pub struct Recording {
    pub name: String,
    pub handled: Mutex<Vec<(Uuid, String)>>,
    pub calls: Mutex<u32>,
}

impl Recording {
    /// A recorder named `name`.
    pub fn named(name: &str) -> Self {
        Self { name: name.to_string(), ..Self::default() }
    }

    /// The commands handled (each id once), in order.
    pub fn commands(&self) -> Vec<String> {
        self.handled.lock().iter().map(|(_, c)| c.clone()).collect()
    }

    /// The ids handled.
    pub fn ids(&self) -> BTreeSet<Uuid> {
        self.handled.lock().iter().map(|(id, _)| *id).collect()
    }
}

#[async_trait::async_trait]
impl CommandHandler for Recording {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, envelope: &CommandEnvelope) -> Result<CommandOutcome, DispatchError> {
        *self.calls.lock() += 1;
        let mut handled = self.handled.lock();
        if handled.iter().any(|(id, _)| *id == envelope.command_id) {
            return Ok(CommandOutcome::Duplicate);
        }
        handled.push((envelope.command_id, format!("{:?}", envelope.command)));
        Ok(CommandOutcome::HANDLED)
    }
}
