//! The `tollgate` command's parts, as a library so that its tests (and
//! anyone) can drive them: [`mock`], [`batch`] and [`simulate`].

pub mod batch;
pub mod cli;
pub mod metrics;
pub mod mock;
pub mod simulate;
