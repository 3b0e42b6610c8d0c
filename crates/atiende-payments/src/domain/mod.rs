//! The payments domain, free of gRPC and SQL: money and currencies, the
//! payment state machine, cards, fees and the ledger's postings. Values
//! here parse instead of validate: once you hold a [`money::Money`] or a
//! [`card::CardNumber`], it is well formed.

pub mod card;
pub mod fees;
pub mod ledger;
pub mod money;
pub mod payment;
pub mod state;
pub mod webhook;
