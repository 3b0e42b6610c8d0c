//! The ledger: balances and the entries of an export.

use super::*;

/// The balance of one account in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBalance {
    pub account: Account,
    pub balance: Money,
}

/// The sums of the tenant's entries posted before `as_of`, per account and
/// currency, ordered by currency and then account.
pub async fn balances(
    db: &Database,
    tenant: &Tenant,
    currency: Option<Currency>,
    as_of: i64,
) -> Result<Vec<AccountBalance>, PaymentsError> {
    let rows: Vec<(String, String, i64)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT account, currency, CAST(SUM(amount_minor) AS BIGINT) FROM ledger_entries \
             WHERE agency_id = $1 AND environment = $2 AND ($3 IS NULL OR currency = $3) \
             AND posting_time < $4 GROUP BY account, currency",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(currency.map(Currency::code))
        .bind(as_of)
        .fetch_all(pool)
        .await?
    });
    let mut balances = rows
        .into_iter()
        .map(|(account, code, sum)| {
            Ok(AccountBalance {
                account: Account::parse(&account).ok_or_else(|| corrupt("ledger account"))?,
                balance: Money::new(
                    Currency::parse(&code).map_err(|_| corrupt("ledger currency"))?,
                    sum,
                ),
            })
        })
        .collect::<Result<Vec<_>, PaymentsError>>()?;
    balances.sort_by_key(|b| (b.balance.currency.code(), b.account));
    Ok(balances)
}

#[derive(sqlx::FromRow)]
struct LedgerEntryRow {
    transaction_id: String,
    entry_id: String,
    transaction_type: String,
    account: String,
    currency: String,
    amount_minor: i64,
    payment_id: String,
    refund_id: Option<String>,
    posting_time: i64,
}

impl TryFrom<LedgerEntryRow> for LedgerEntry {
    type Error = PaymentsError;

    fn try_from(row: LedgerEntryRow) -> Result<Self, Self::Error> {
        Ok(LedgerEntry {
            transaction_id: row.transaction_id,
            entry_id: row.entry_id,
            kind: TransactionType::parse(&row.transaction_type)
                .ok_or_else(|| corrupt("ledger transaction type"))?,
            account: Account::parse(&row.account).ok_or_else(|| corrupt("ledger account"))?,
            amount: Money::new(
                Currency::parse(&row.currency).map_err(|_| corrupt("ledger currency"))?,
                row.amount_minor,
            ),
            payment_id: row.payment_id,
            refund_id: row.refund_id,
            posting_time: row.posting_time,
        })
    }
}

/// Where an export continues: after this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub posting_time: i64,
    pub transaction_id: String,
}

/// The tenant's entries posted in [`from`, `before`), in (posting_time,
/// transaction_id, entry_id) order, after `cursor`.
pub async fn ledger_entries(
    db: &Database,
    tenant: &Tenant,
    currency: Option<Currency>,
    from: Option<i64>,
    before: i64,
    cursor: Option<&ExportCursor>,
    limit: i64,
) -> Result<Vec<LedgerEntry>, PaymentsError> {
    let rows: Vec<LedgerEntryRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT transaction_id, entry_id, transaction_type, account, currency, amount_minor, \
             payment_id, refund_id, posting_time FROM ledger_entries \
             WHERE agency_id = $1 AND environment = $2 AND ($3 IS NULL OR currency = $3) \
             AND ($4 IS NULL OR posting_time >= $4) AND posting_time < $5 \
             AND ($6 IS NULL OR posting_time > $6 OR (posting_time = $6 AND transaction_id > $7)) \
             ORDER BY posting_time, transaction_id, entry_id LIMIT $8",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(currency.map(Currency::code))
        .bind(from)
        .bind(before)
        .bind(cursor.map(|c| c.posting_time))
        .bind(cursor.map(|c| c.transaction_id.as_str()))
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(LedgerEntry::try_from).collect()
}
