//! The stages that run on Kafka consumer groups: the skeleton every one of them runs on, written
//! once ([`group`]).

pub mod group;
