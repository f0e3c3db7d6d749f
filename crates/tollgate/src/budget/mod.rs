//! Budgets of several dimensions and keyed limiters, over a [`Store`].

#[cfg(feature = "conformance")]
pub mod conformance;
mod direct;
mod faces;
mod keyed;
mod limits;
mod memory;
#[cfg(feature = "metrics")]
mod meters;
mod queue;
mod store;
pub(crate) mod table;
pub mod transition;

pub use direct::{DirectStore, DirectStoreError};
pub use faces::{Budget, KeyedLimiter};
pub use keyed::{Grant, KeyedBudget, KeyedBuilder, LimiterKind, Stats};
pub use limits::{Limits, LimitsBuilder, LimitsError, LimitsErrorKind, MAX_DIMENSIONS};
pub use memory::{MemoryStore, DEFAULT_LIMITS_TTL, DEFAULT_MAX_KEYS};
pub use store::{Admit, Change, Decision, Denial, QueuePlace, Store, StoreStats, SyncStore, View};
