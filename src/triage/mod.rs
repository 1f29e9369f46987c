//! Triage (spec §7): rules that answer what a team always answers the same way. The pure
//! part is here — the source-neutral [`facts`] a rule reads and the [`rules`] evaluator;
//! recording the decisions each cycle, the hourly cap and queueing rule answers (apply mode)
//! come with the store.

pub(crate) mod facts;
pub(crate) mod rules;
