//! Budgets of several dimensions and keyed limiters, over a [`Store`].

mod faces;
mod keyed;
mod limits;
mod memory;
mod store;
mod table;

pub use faces::{Budget, KeyedLimiter};
pub use keyed::{Face, Grant, KeyedBudget, KeyedBuilder, Stats};
pub use limits::{Limits, LimitsBuilder, LimitsError, LimitsErrorKind, MAX_DIMENSIONS};
pub use memory::{MemoryStore, DEFAULT_MAX_KEYS};
pub use store::{Change, Decision, Store, StoreStats};
