//! How many tokens a request will spend, guessed before it is sent: the
//! core's [`tollgate::llm`], which a server in front of an LLM shares.

pub use tollgate::llm::{DefaultEstimator, Estimate, TokenEstimator, DEFAULT_OUTPUT_TOKENS};
