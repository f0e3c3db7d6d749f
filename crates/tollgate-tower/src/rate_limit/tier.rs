//! Tiers: a quota per request, chosen by who calls (free 60 a minute, pro
//! 600), each with its own policy name in the `RateLimit` fields.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use http::{Extensions, HeaderMap};
use tollgate::headers::PolicyName;
use tollgate::Quota;

use crate::response::HeaderStyle;

/// The tier of a request: the name of one of the layer's tiers
/// ([`RateLimitBuilder::tier`](super::RateLimitBuilder::tier)).
///
/// By default the layer reads it from the request's extensions, where an
/// authentication layer in front of it puts it:
///
/// ```
/// use tollgate_tower::Tier;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(Tier::new("pro"));
/// assert_eq!(request.extensions().get::<Tier>().unwrap().name(), "pro");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tier(Cow<'static, str>);

impl Tier {
    /// A tier by its name.
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self(name.into())
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Picks a request's tier from its headers and extensions.
pub(super) type Resolver = Arc<dyn Fn(&HeaderMap, &Extensions) -> Option<Tier> + Send + Sync>;

/// A declared tier: its quota, and the fields its answers carry.
pub(super) struct Limit {
    pub(super) name: String,
    pub(super) meters: crate::meters::Meters,
    pub(super) quota: Quota,
    pub(super) style: HeaderStyle,
}

/// A layer's tiers, and how a request's tier is found.
#[derive(Default)]
pub(super) struct Tiers {
    pub(super) limits: Vec<Limit>,
    pub(super) resolver: Option<Resolver>,
}

impl Tiers {
    /// The index of a request's declared tier, if it has one (a tier the
    /// layer does not know is none: the default quota applies).
    #[inline]
    pub(super) fn of(&self, headers: &HeaderMap, extensions: &Extensions) -> Option<usize> {
        if self.limits.is_empty() {
            return None;
        }
        // The extension is read in place: a tier named at run time is a
        // `String`, and cloning it would allocate on every request.
        let resolved;
        let tier = match &self.resolver {
            Some(resolve) => {
                resolved = resolve(headers, extensions)?;
                &resolved
            }
            None => extensions.get::<Tier>()?,
        };
        let found = self
            .limits
            .iter()
            .position(|limit| limit.name == tier.name());
        if found.is_none() {
            tracing::debug!(
                tier = tier.name(),
                "a tier the layer does not have: the default quota applies"
            );
        }
        found
    }
}

impl fmt::Debug for Tiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.limits.iter().map(|l| (&l.name, l.quota)))
            .finish()
    }
}

/// A tier as the builder holds it until the layer is built (the header
/// style depends on the builder's other choices).
#[derive(Clone, Debug)]
pub(super) struct Declared {
    pub(super) name: PolicyName,
    pub(super) quota: Quota,
}
