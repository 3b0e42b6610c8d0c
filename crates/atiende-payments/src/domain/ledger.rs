//! Double-entry postings. Every money movement is one transaction of
//! entries that sum to zero in its currency: positive amounts are debits,
//! negative ones credits. Entries are append-only; a failed refund is
//! undone by a reversing transaction, never by editing.
//!
//! ```text
//! PAYMENT          COLLECTIONS −amount       AGENCY_RECEIVABLE +amount
//! FEE              AGENCY_RECEIVABLE −fee    FEES +fee
//! REFUND           AGENCY_RECEIVABLE −amount REFUNDS +amount
//! REFUND_REVERSAL  the REFUND entries negated
//! ```

use crate::domain::money::{Currency, Money};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Account {
    Collections,
    AgencyReceivable,
    Fees,
    Refunds,
}

impl Account {
    pub const ALL: [Account; 4] = [
        Self::Collections,
        Self::AgencyReceivable,
        Self::Fees,
        Self::Refunds,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Collections => "collections",
            Self::AgencyReceivable => "agency_receivable",
            Self::Fees => "fees",
            Self::Refunds => "refunds",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == raw)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionType {
    Payment,
    Fee,
    Refund,
    RefundReversal,
}

impl TransactionType {
    pub const ALL: [TransactionType; 4] =
        [Self::Payment, Self::Fee, Self::Refund, Self::RefundReversal];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Fee => "fee",
            Self::Refund => "refund",
            Self::RefundReversal => "refund_reversal",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// One entry of a transaction, before it has ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posting {
    pub account: Account,
    pub amount_minor: i64,
}

/// A balanced set of postings in one currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub kind: TransactionType,
    pub currency: Currency,
    postings: Vec<Posting>,
}

impl Transaction {
    /// Moves `amount` from `credit` to `debit`. Two postings of opposite
    /// sign: balanced by construction.
    fn transfer(kind: TransactionType, amount: Money, credit: Account, debit: Account) -> Self {
        Self {
            kind,
            currency: amount.currency,
            postings: vec![
                Posting {
                    account: credit,
                    amount_minor: amount.minor.saturating_neg(),
                },
                Posting {
                    account: debit,
                    amount_minor: amount.minor,
                },
            ],
        }
    }

    /// A payment reached success: the payer's money is owed to the agency.
    pub fn payment(amount: Money) -> Self {
        Self::transfer(
            TransactionType::Payment,
            amount,
            Account::Collections,
            Account::AgencyReceivable,
        )
    }

    /// The fee of a payment: taken from what the agency is owed.
    pub fn fee(fee: Money) -> Self {
        Self::transfer(
            TransactionType::Fee,
            fee,
            Account::AgencyReceivable,
            Account::Fees,
        )
    }

    /// A refund was submitted: paid back out of what the agency is owed.
    pub fn refund(amount: Money) -> Self {
        Self::transfer(
            TransactionType::Refund,
            amount,
            Account::AgencyReceivable,
            Account::Refunds,
        )
    }

    /// A refund failed: its refund transaction negated.
    pub fn refund_reversal(amount: Money) -> Self {
        Self::transfer(
            TransactionType::RefundReversal,
            amount,
            Account::Refunds,
            Account::AgencyReceivable,
        )
    }

    pub fn postings(&self) -> &[Posting] {
        &self.postings
    }

    /// Whether the entries sum to zero (checked without overflow).
    pub fn is_balanced(&self) -> bool {
        self.postings
            .iter()
            .try_fold(0_i64, |sum, p| sum.checked_add(p.amount_minor))
            == Some(0)
    }
}

/// What a successful payment posts: the payment, and its fee when there is
/// one. A zero fee posts nothing (no zero entries in the ledger).
pub fn capture_postings(amount: Money, fee: Money) -> Vec<Transaction> {
    let mut transactions = vec![Transaction::payment(amount)];
    if fee.minor > 0 {
        transactions.push(Transaction::fee(fee));
    }
    transactions
}

/// One stored line of the ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    pub transaction_id: String,
    pub entry_id: String,
    pub kind: TransactionType,
    pub account: Account,
    pub amount: Money,
    pub payment_id: String,
    pub refund_id: Option<String>,
    pub posting_time: i64,
}

/// Cuts entries read in (posting_time, transaction_id) order, at most
/// `limit` of them, so that no transaction is split: when the read was
/// full, the last transaction may continue past it and is left for the
/// next chunk. Returns the chunk and whether more may follow.
pub fn complete_transactions(
    mut entries: Vec<LedgerEntry>,
    limit: usize,
) -> (Vec<LedgerEntry>, bool) {
    if entries.len() < limit {
        return (entries, false);
    }
    let last = entries.last().map(|e| e.transaction_id.clone());
    let keep = entries
        .iter()
        .rposition(|e| Some(&e.transaction_id) != last.as_ref())
        .map_or(0, |i| i + 1);
    if keep == 0 {
        // One transaction fills the whole read: send it whole rather than
        // never (transactions have two entries, far below any limit).
        return (entries, true);
    }
    entries.truncate(keep);
    (entries, true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::domain::fees::FeeSchedule;

    fn entry(transaction: &str, entry: &str) -> LedgerEntry {
        LedgerEntry {
            transaction_id: transaction.into(),
            entry_id: entry.into(),
            kind: TransactionType::Payment,
            account: Account::Collections,
            amount: Money::new(Currency::parse("CLP").unwrap(), 1),
            payment_id: "pay_1".into(),
            refund_id: None,
            posting_time: 1,
        }
    }

    #[test]
    fn chunks_never_split_a_transaction() {
        let entries = vec![
            entry("a", "1"),
            entry("a", "2"),
            entry("b", "3"),
            entry("b", "4"),
        ];
        // A short read is the end.
        assert_eq!(
            complete_transactions(entries.clone(), 5),
            (entries.clone(), false)
        );
        // A full read ending inside "b" leaves "b" for the next chunk.
        let (chunk, more) = complete_transactions(entries[..3].to_vec(), 3);
        assert_eq!(chunk, entries[..2].to_vec());
        assert!(more);
        // A full read ending exactly on a boundary cannot know: it keeps
        // everything but the last transaction, which the next read repeats
        // from its start.
        let (chunk, more) = complete_transactions(entries.clone(), 4);
        assert_eq!(chunk, entries[..2].to_vec());
        assert!(more);
    }

    #[test]
    fn the_documented_example_leaves_7700_receivable() {
        let clp = Currency::parse("CLP").unwrap();
        let mut txs = capture_postings(Money::new(clp, 10_000), Money::new(clp, 300));
        txs.push(Transaction::refund(Money::new(clp, 2_000)));
        let balances = balances(&txs);
        assert_eq!(balances[&Account::AgencyReceivable], 7_700);
        assert_eq!(balances[&Account::Collections], -10_000);
        assert_eq!(balances[&Account::Fees], 300);
        assert_eq!(balances[&Account::Refunds], 2_000);
        assert!(txs.iter().all(Transaction::is_balanced));
    }

    fn balances(txs: &[Transaction]) -> BTreeMap<Account, i64> {
        let mut out = BTreeMap::new();
        for p in txs.iter().flat_map(|t| t.postings()) {
            *out.entry(p.account).or_insert(0) += p.amount_minor;
        }
        out
    }

    /// Random captures, refunds and failed refunds: every transaction
    /// balances, the accounts sum to zero per currency, and each account
    /// equals what the operations say it should.
    #[test]
    fn random_operations_keep_every_currency_balanced() {
        let mut rng = StdRng::seed_from_u64(0x00A7_1EDE);
        let fees = FeeSchedule::parse("2.9", &BTreeMap::from([("USD".to_owned(), 30)])).unwrap();
        let currencies = ["CLP", "USD", "CLF"].map(|c| Currency::parse(c).unwrap());
        for _ in 0..200 {
            let mut txs = Vec::new();
            let mut expected: BTreeMap<(Currency, Account), i64> = BTreeMap::new();
            let mut add =
                |c: Currency, a: Account, m: i64| *expected.entry((c, a)).or_insert(0) += m;
            for _ in 0..rng.random_range(1..30) {
                let currency = currencies[rng.random_range(0..currencies.len())];
                let amount = Money::new(currency, rng.random_range(1..10_000_000));
                let fee = fees.fee(amount);
                txs.extend(capture_postings(amount, fee));
                add(currency, Account::Collections, -amount.minor);
                add(
                    currency,
                    Account::AgencyReceivable,
                    amount.minor - fee.minor,
                );
                add(currency, Account::Fees, fee.minor);
                let mut available = amount.minor;
                while available > 0 && rng.random_bool(0.5) {
                    let refund = Money::new(currency, rng.random_range(1..=available));
                    txs.push(Transaction::refund(refund));
                    if rng.random_bool(0.2) {
                        txs.push(Transaction::refund_reversal(refund));
                    } else {
                        available -= refund.minor;
                        add(currency, Account::AgencyReceivable, -refund.minor);
                        add(currency, Account::Refunds, refund.minor);
                    }
                }
            }
            assert!(txs.iter().all(Transaction::is_balanced));
            let mut actual: BTreeMap<(Currency, Account), i64> = BTreeMap::new();
            for t in &txs {
                for p in t.postings() {
                    *actual.entry((t.currency, p.account)).or_insert(0) += p.amount_minor;
                }
            }
            for currency in currencies {
                let sum: i64 = actual
                    .iter()
                    .filter(|((c, _), _)| *c == currency)
                    .map(|(_, v)| v)
                    .sum();
                assert_eq!(sum, 0, "{}", currency.code());
            }
            actual.retain(|_, v| *v != 0);
            expected.retain(|_, v| *v != 0);
            assert_eq!(actual, expected);
        }
    }
}
