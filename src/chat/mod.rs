//! The rules of the chat, free of transport and storage details: what a valid name or
//! message is, what clients may say, how fast they may say it, and who is present.

pub mod names;
pub mod presence;
pub mod protocol;
pub mod rate;
pub mod roster;
