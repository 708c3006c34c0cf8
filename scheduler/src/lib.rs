//! pm-scheduler: the elected leader that spreads each pool's target over its zones.

pub mod distribution;
