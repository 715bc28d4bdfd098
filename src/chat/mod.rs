//! The rules of the chat, free of transport and storage details: what a valid name or
//! message is, what clients may say, and how fast and how much they may ask.

pub mod mentions;
pub mod names;
pub mod protocol;
pub mod rate;
pub mod reactions;
