//! The table port on DynamoDB. Items are `pk`/`sk` strings plus attributes; every guard is a
//! ConditionExpression; queries use KeyConditionExpression on the table or a global secondary index.

use crate::error::{code, port_error};
use crate::expr::{Expr, from_av, scalar, to_av};
use async_trait::async_trait;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, ReturnValue, TransactWriteItem};
use granary_ports::table::{validate_attribute_name, validate_transaction};
use granary_ports::{Cond, Cursor, Item, Key, Page, PortError, PortResult, Query, Resources, Table, TxOp, Update};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Tables on DynamoDB.
pub struct AwsTable {
    client: Client,
    prefix: String,
    /// Index name to (partition attribute, sort attribute), per logical table.
    indexes: HashMap<String, HashMap<String, (String, Option<String>)>>,
}

type AvMap = HashMap<String, AttributeValue>;

fn key_map(key: &Key) -> AvMap {
    HashMap::from([("pk".to_owned(), AttributeValue::S(key.pk.clone())), ("sk".to_owned(), AttributeValue::S(key.sk.clone()))])
}

fn item_map(item: &Item) -> PortResult<AvMap> {
    let mut m = key_map(&item.key);
    for (k, v) in &item.attrs {
        validate_attribute_name(k)?;
        m.insert(k.clone(), to_av(v));
    }
    Ok(m)
}

fn item_from(mut m: AvMap) -> PortResult<Item> {
    let mut take = |k: &str| match m.remove(k) {
        Some(AttributeValue::S(s)) => Ok(s),
        _ => Err(PortError::Backend(format!("item without a string {k}"))),
    };
    let key = Key { pk: take("pk")?, sk: take("sk")? };
    let attrs: Map<String, Value> = m.iter().map(|(k, v)| (k.clone(), from_av(v))).collect();
    Ok(Item { key, attrs })
}

fn condition_failed(table: &str, key: &Key) -> PortError {
    PortError::ConditionFailed { table: table.to_owned(), pk: key.pk.clone(), sk: key.sk.clone() }
}

/// A LastEvaluatedKey as an opaque cursor, keeping each key's type.
fn encode_cursor(m: &AvMap) -> Cursor {
    let obj: Map<String, Value> = m
        .iter()
        .map(|(k, v)| {
            let typed = match v {
                AttributeValue::N(n) => serde_json::json!({ "N": n }),
                AttributeValue::S(s) => serde_json::json!({ "S": s }),
                other => serde_json::json!({ "S": format!("{other:?}") }),
            };
            (k.clone(), typed)
        })
        .collect();
    Cursor(Value::Object(obj).to_string())
}

fn decode_cursor(c: &Cursor) -> PortResult<AvMap> {
    let bad = || PortError::Invalid("the query cursor is not one this table handed out".into());
    let v: Map<String, Value> = serde_json::from_str(&c.0).map_err(|_| bad())?;
    v.into_iter()
        .map(|(k, typed)| {
            let av = match (typed.get("S").and_then(Value::as_str), typed.get("N").and_then(Value::as_str)) {
                (Some(s), _) => AttributeValue::S(s.to_owned()),
                (_, Some(n)) => AttributeValue::N(n.to_owned()),
                _ => return Err(bad()),
            };
            Ok((k, av))
        })
        .collect()
}

impl AwsTable {
    pub(crate) fn new(client: Client, prefix: &str, resources: &Resources) -> Self {
        let indexes = resources.index_keys();
        Self { client, prefix: prefix.to_owned(), indexes }
    }

    fn physical(&self, table: &str) -> PortResult<String> {
        if self.indexes.contains_key(table) {
            Ok(format!("{}{table}", self.prefix))
        } else {
            Err(PortError::NotFound(format!("table {table} is not declared")))
        }
    }

    fn tx_item(&self, op: &TxOp) -> PortResult<TransactWriteItem> {
        let mut e = Expr::default();
        let built = match op {
            TxOp::Put { table, item, cond } => {
                let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
                let put = Put::builder()
                    .table_name(self.physical(table)?)
                    .set_item(Some(item_map(item)?))
                    .set_condition_expression(ce)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build();
                TransactWriteItem::builder().put(put.map_err(|x| PortError::Invalid(x.to_string()))?).build()
            }
            TxOp::Update { table, key, updates, cond } => {
                let ue = e.updates(updates)?;
                let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
                let upd = aws_sdk_dynamodb::types::Update::builder()
                    .table_name(self.physical(table)?)
                    .set_key(Some(key_map(key)))
                    .update_expression(ue)
                    .set_condition_expression(ce)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build();
                TransactWriteItem::builder().update(upd.map_err(|x| PortError::Invalid(x.to_string()))?).build()
            }
            TxOp::Delete { table, key, cond } => {
                let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
                let del = Delete::builder()
                    .table_name(self.physical(table)?)
                    .set_key(Some(key_map(key)))
                    .set_condition_expression(ce)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build();
                TransactWriteItem::builder().delete(del.map_err(|x| PortError::Invalid(x.to_string()))?).build()
            }
            TxOp::Check { table, key, cond } => {
                let ce = e.cond(cond)?;
                let check = ConditionCheck::builder()
                    .table_name(self.physical(table)?)
                    .set_key(Some(key_map(key)))
                    .condition_expression(ce)
                    .set_expression_attribute_names(e.names())
                    .set_expression_attribute_values(e.values())
                    .build();
                TransactWriteItem::builder().condition_check(check.map_err(|x| PortError::Invalid(x.to_string()))?).build()
            }
            TxOp::Outbox { .. } => return Err(PortError::Invalid("an outbox event reaches DynamoDB as its row (TxOp::into_row)".into())),
        };
        Ok(built)
    }
}

#[async_trait]
impl Table for AwsTable {
    async fn get(&self, table: &str, key: &Key) -> PortResult<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(self.physical(table)?)
            .set_key(Some(key_map(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| port_error("GetItem", e))?;
        out.item.map(item_from).transpose()
    }

    async fn put(&self, table: &str, item: Item, cond: Option<Cond>) -> PortResult<()> {
        let mut e = Expr::default();
        let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
        let result = self
            .client
            .put_item()
            .table_name(self.physical(table)?)
            .set_item(Some(item_map(&item)?))
            .set_condition_expression(ce)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) if code(&err) == Some("ConditionalCheckFailedException") => Err(condition_failed(table, &item.key)),
            Err(err) => Err(port_error("PutItem", err)),
        }
    }

    async fn update(&self, table: &str, key: &Key, updates: Vec<Update>, cond: Option<Cond>) -> PortResult<Item> {
        let mut e = Expr::default();
        let ue = e.updates(&updates)?;
        let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
        let result = self
            .client
            .update_item()
            .table_name(self.physical(table)?)
            .set_key(Some(key_map(key)))
            .update_expression(ue)
            .set_condition_expression(ce)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => item_from(out.attributes.unwrap_or_else(|| key_map(key))),
            Err(err) if code(&err) == Some("ConditionalCheckFailedException") => Err(condition_failed(table, key)),
            Err(err) => Err(port_error("UpdateItem", err)),
        }
    }

    async fn delete(&self, table: &str, key: &Key, cond: Option<Cond>) -> PortResult<Option<Item>> {
        let mut e = Expr::default();
        let ce = cond.as_ref().map(|c| e.cond(c)).transpose()?;
        let result = self
            .client
            .delete_item()
            .table_name(self.physical(table)?)
            .set_key(Some(key_map(key)))
            .set_condition_expression(ce)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .return_values(ReturnValue::AllOld)
            .send()
            .await;
        match result {
            Ok(out) => out.attributes.filter(|m| !m.is_empty()).map(item_from).transpose(),
            Err(err) if code(&err) == Some("ConditionalCheckFailedException") => Err(condition_failed(table, key)),
            Err(err) => Err(port_error("DeleteItem", err)),
        }
    }

    async fn transact(&self, ops: Vec<TxOp>) -> PortResult<()> {
        validate_transaction(&ops)?;
        // SQS cannot join a DynamoDB transaction: outbox events are written as rows for the outbox.
        let items = ops.into_iter().map(|op| self.tx_item(&op.into_row())).collect::<PortResult<Vec<_>>>()?;
        match self.client.transact_write_items().set_transact_items(Some(items)).send().await {
            Ok(_) => Ok(()),
            Err(err) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(tce)) = err.as_service_error() {
                    let reasons = tce.cancellation_reasons();
                    if let Some(index) = reasons.iter().position(|r| r.code() == Some("ConditionalCheckFailed")) {
                        return Err(PortError::TransactionCanceled { index, reason: "ConditionalCheckFailed".into() });
                    }
                    let codes: Vec<&str> = reasons.iter().filter_map(|r| r.code()).filter(|c| *c != "None").collect();
                    return Err(PortError::Unavailable(format!("TransactWriteItems cancelled without a failed condition: {codes:?}")));
                }
                Err(port_error("TransactWriteItems", err))
            }
        }
    }

    async fn query(&self, q: Query) -> PortResult<Page> {
        let physical = self.physical(&q.table)?;
        let (part_attr, sort_attr) = match &q.index {
            None => ("pk".to_owned(), Some("sk".to_owned())),
            Some(name) => self.indexes[&q.table]
                .get(name)
                .cloned()
                .ok_or_else(|| PortError::NotFound(format!("index {name} of table {}", q.table)))?,
        };
        let sort = match (&q.sort, &sort_attr) {
            (Some(c), Some(s)) => Some((s.as_str(), c)),
            (Some(_), None) => return Err(PortError::Invalid(format!("index {:?} has no sort key to put a condition on", q.index))),
            (None, _) => None,
        };
        let mut e = Expr::default();
        scalar(&q.partition)?;
        let kce = e.key_condition(&part_attr, &q.partition, sort)?;
        let start = q.after.as_ref().map(decode_cursor).transpose()?;
        let limit = i32::try_from(q.limit.clamp(1, 10_000)).unwrap_or(10_000);
        let out = self
            .client
            .query()
            .table_name(physical)
            .set_index_name(q.index.clone())
            .key_condition_expression(kce)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .scan_index_forward(q.ascending)
            .limit(limit)
            .set_exclusive_start_key(start)
            .consistent_read(q.index.is_none())
            .send()
            .await
            .map_err(|e| port_error("Query", e))?;
        let items = out.items.unwrap_or_default().into_iter().map(item_from).collect::<PortResult<Vec<_>>>()?;
        let next = out.last_evaluated_key.filter(|k| !k.is_empty()).map(|k| encode_cursor(&k));
        Ok(Page { items, next })
    }
}
