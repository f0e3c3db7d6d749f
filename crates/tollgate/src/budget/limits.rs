//! The named dimensions of a budget, each with its quota.

use std::fmt;
use std::sync::Arc;

use crate::Quota;

/// The most dimensions one budget may have. Decisions keep every
/// dimension's state on the stack, so that they allocate nothing.
pub const MAX_DIMENSIONS: usize = 8;

/// The dimensions of a budget: named quotas that one acquire spends from
/// together, such as requests, input tokens and output tokens per minute.
///
/// Costs are given in the order the dimensions were added.
///
/// ```
/// use tollgate::{Limits, Quota};
///
/// let limits = Limits::builder()
///     .dimension("requests", "500/min".parse()?)
///     .dimension("input_tokens", Quota::per_minute(30_000)?)
///     .dimension("output_tokens", Quota::per_minute(10_000)?)
///     .build()?;
/// assert_eq!(limits.len(), 3);
/// assert_eq!(limits.index_of("input_tokens"), Some(1));
/// assert_eq!(limits.quota(2).burst_size(), 10_000);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Limits {
    names: Arc<[Arc<str>]>,
    quotas: Arc<[Quota]>,
}

impl Limits {
    /// One dimension, named `"requests"`.
    pub fn single(quota: Quota) -> Self {
        Self {
            names: Arc::from([Arc::from("requests")]),
            quotas: Arc::from([quota]),
        }
    }

    /// A builder, to add dimensions one by one.
    pub fn builder() -> LimitsBuilder {
        LimitsBuilder {
            dimensions: Vec::new(),
        }
    }

    /// How many dimensions there are.
    pub fn len(&self) -> usize {
        self.quotas.len()
    }

    /// Always false: a budget has at least one dimension.
    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    /// The name of dimension `index`.
    ///
    /// # Panics
    ///
    /// When `index` is not below [`len`](Self::len).
    #[allow(clippy::indexing_slicing)]
    pub fn name(&self, index: usize) -> &str {
        &self.names[index]
    }

    /// The quota of dimension `index`.
    ///
    /// # Panics
    ///
    /// When `index` is not below [`len`](Self::len).
    #[allow(clippy::indexing_slicing)]
    pub fn quota(&self, index: usize) -> &Quota {
        &self.quotas[index]
    }

    /// The index of the dimension called `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| &**n == name)
    }

    /// The dimensions' names and quotas, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Quota)> + '_ {
        self.names.iter().map(|n| &**n).zip(self.quotas.iter())
    }

    /// Every quota, in order.
    pub fn quotas(&self) -> &[Quota] {
        &self.quotas
    }

    pub(crate) fn name_arc(&self, index: usize) -> Option<&Arc<str>> {
        self.names.get(index)
    }

    /// The same dimensions with the quota of one replaced.
    pub(crate) fn with_quota(&self, index: usize, quota: Quota) -> Self {
        let mut quotas = self.quotas.to_vec();
        if let Some(slot) = quotas.get_mut(index) {
            *slot = quota;
        }
        Self {
            names: Arc::clone(&self.names),
            quotas: quotas.into(),
        }
    }

    /// Whether `other` has the same dimension names in the same order.
    pub(crate) fn same_dimensions(&self, other: &Self) -> bool {
        self.names == other.names
    }
}

impl From<Quota> for Limits {
    fn from(quota: Quota) -> Self {
        Self::single(quota)
    }
}

impl fmt::Debug for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(name, quota)| (name, quota.to_string())))
            .finish()
    }
}

/// Builds [`Limits`].
#[derive(Debug)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct LimitsBuilder {
    dimensions: Vec<(String, Quota)>,
}

impl LimitsBuilder {
    /// Adds a dimension; costs are given in the order dimensions are added.
    pub fn dimension(mut self, name: impl Into<String>, quota: Quota) -> Self {
        self.dimensions.push((name.into(), quota));
        self
    }

    /// The limits, or an error naming what is wrong: no dimension, more
    /// than [`MAX_DIMENSIONS`], an empty name or a name given twice.
    pub fn build(self) -> Result<Limits, LimitsError> {
        if self.dimensions.is_empty() {
            return Err(LimitsError::new(LimitsErrorKind::Empty, String::new()));
        }
        if self.dimensions.len() > MAX_DIMENSIONS {
            return Err(LimitsError::new(
                LimitsErrorKind::TooMany,
                self.dimensions.len().to_string(),
            ));
        }
        for (i, (name, _)) in self.dimensions.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(LimitsError::new(LimitsErrorKind::EmptyName, name.clone()));
            }
            if self.dimensions.iter().take(i).any(|(n, _)| n == name) {
                return Err(LimitsError::new(LimitsErrorKind::Duplicate, name.clone()));
            }
        }
        let (names, quotas): (Vec<Arc<str>>, Vec<Quota>) = self
            .dimensions
            .into_iter()
            .map(|(name, quota)| (Arc::from(name), quota))
            .unzip();
        Ok(Limits {
            names: names.into(),
            quotas: quotas.into(),
        })
    }
}

/// Limits that cannot be built; [`kind`](Self::kind) says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitsError {
    kind: LimitsErrorKind,
    input: String,
}

/// Why [`Limits`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LimitsErrorKind {
    /// No dimension was added.
    Empty,
    /// More than [`MAX_DIMENSIONS`] dimensions.
    TooMany,
    /// A dimension's name is empty.
    EmptyName,
    /// Two dimensions have the same name.
    Duplicate,
    /// Per-key limits whose dimensions differ from the limiter's.
    Mismatch,
}

impl LimitsError {
    pub(crate) fn new(kind: LimitsErrorKind, input: String) -> Self {
        Self { kind, input }
    }

    /// Why the limits could not be built.
    pub fn kind(&self) -> LimitsErrorKind {
        self.kind
    }
}

impl fmt::Display for LimitsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            LimitsErrorKind::Empty => f.write_str("a budget needs at least one dimension"),
            LimitsErrorKind::TooMany => write!(
                f,
                "a budget may have at most {MAX_DIMENSIONS} dimensions, not {}",
                self.input
            ),
            LimitsErrorKind::EmptyName => f.write_str("a dimension's name must not be empty"),
            LimitsErrorKind::Duplicate => {
                write!(f, "the dimension {:?} is named twice", self.input)
            }
            LimitsErrorKind::Mismatch => write!(
                f,
                "per-key limits must have the limiter's dimensions, in order ({})",
                self.input
            ),
        }
    }
}

impl std::error::Error for LimitsError {}
