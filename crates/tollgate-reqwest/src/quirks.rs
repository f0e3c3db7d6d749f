//! What some providers do that their headers do not say, by host: one
//! table, read once per endpoint.
//!
//! Everything else the middleware learns from the answers themselves; a
//! row belongs here only where the answers cannot show it in time.

/// What a provider does that its headers do not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Quirks {
    /// Its `-requests` headers count a day, not a minute (Groq's): they do
    /// not pace; the minute's limit comes from refusals.
    pub(crate) requests_count_a_day: bool,
    /// A request limit it states with neither reset nor window counts ten
    /// seconds (Azure OpenAI's `x-ratelimit-limit-requests`: the
    /// deployment's requests a minute over six, 20 on a 120 RPM one).
    pub(crate) requests_count_ten_seconds: bool,
    /// It charges the output written, not the call's bound (Anthropic's
    /// output tokens), which its rounded `remaining` cannot show.
    pub(crate) charges_written_output: bool,
}

const NONE: Quirks = Quirks {
    requests_count_a_day: false,
    requests_count_ten_seconds: false,
    charges_written_output: false,
};

const AZURE: Quirks = Quirks {
    requests_count_ten_seconds: true,
    ..NONE
};

/// The table: a domain, and what its hosts and those under it do.
const TABLE: &[(&str, Quirks)] = &[
    (
        "groq.com",
        Quirks {
            requests_count_a_day: true,
            ..NONE
        },
    ),
    ("openai.azure.com", AZURE),
    ("cognitiveservices.azure.com", AZURE),
    ("services.ai.azure.com", AZURE),
    (
        "anthropic.com",
        Quirks {
            charges_written_output: true,
            ..NONE
        },
    ),
];

impl Quirks {
    /// The quirks of `host`: those of every row whose domain it is or is
    /// under (none for a host the table does not name).
    pub(crate) fn of(host: &str) -> Self {
        TABLE
            .iter()
            .filter(|(domain, _)| under(host, domain))
            .fold(NONE, |all, (_, row)| Self {
                requests_count_a_day: all.requests_count_a_day || row.requests_count_a_day,
                requests_count_ten_seconds: all.requests_count_ten_seconds
                    || row.requests_count_ten_seconds,
                charges_written_output: all.charges_written_output || row.charges_written_output,
            })
    }
}

/// Whether `host` is `domain` or a name under it (a trailing dot aside).
fn under(host: &str, domain: &str) -> bool {
    host.trim_end_matches('.')
        .strip_suffix(domain)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groq_hosts_count_requests_a_day() {
        for host in ["api.groq.com", "groq.com", "api.groq.com."] {
            assert!(Quirks::of(host).requests_count_a_day, "{host}");
        }
        for host in ["notgroq.com", "groq.com.evil.example", "api.openai.com"] {
            assert!(!Quirks::of(host).requests_count_a_day, "{host}");
        }
    }

    #[test]
    fn azure_hosts_count_requests_over_ten_seconds() {
        for host in [
            "my-resource.openai.azure.com",
            "my-resource.cognitiveservices.azure.com",
            "my-project.services.ai.azure.com",
            "my-resource.openai.azure.com.",
        ] {
            assert!(Quirks::of(host).requests_count_ten_seconds, "{host}");
        }
        for host in [
            "api.openai.com",
            "azure.com",
            "openai.azure.com.example",
            "notopenai.azure.com",
            "api.groq.com",
        ] {
            assert!(!Quirks::of(host).requests_count_ten_seconds, "{host}");
        }
    }

    #[test]
    fn anthropic_hosts_charge_what_was_written() {
        assert!(Quirks::of("api.anthropic.com").charges_written_output);
        assert_eq!(Quirks::of("api.anthropic.com.example"), NONE);
        assert_eq!(Quirks::of("127.0.0.1"), NONE);
    }
}
