//! The fleet as this replica holds it: the live registry of nodes and their
//! sessions, the agents' Jobs streams, their nodes' latest reports, and the shared snapshot of every node
//! row with the scheduler's views of it.

pub mod hub;
pub mod registry;
pub mod reports;
pub mod snapshot;
