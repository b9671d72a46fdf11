//! Creates declared tables, queues and buckets where nothing else does: on an emulator (moto), or for a
//! test. In AWS the SAM template creates them. Creating what exists already is not an error.

use crate::Aws;
use crate::error::{code, port_error};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType,
    TimeToLiveSpecification,
};
use aws_sdk_sqs::types::QueueAttributeName;
use granary_ports::{AttrKind, PortError, PortResult, Resources};
use std::collections::BTreeMap;

fn scalar(kind: AttrKind) -> ScalarAttributeType {
    match kind {
        AttrKind::String => ScalarAttributeType::S,
        AttrKind::Number => ScalarAttributeType::N,
    }
}

fn invalid(e: impl std::fmt::Display) -> PortError {
    PortError::Invalid(e.to_string())
}

/// Creates every resource of `resources` under the backend's name prefix.
pub async fn provision(aws: &Aws, resources: &Resources) -> PortResult<()> {
    let ddb = &aws.table_client();
    for t in &resources.tables {
        let mut attrs = BTreeMap::from([("pk".to_owned(), AttrKind::String), ("sk".to_owned(), AttrKind::String)]);
        let mut gsis = Vec::new();
        for ix in &t.indexes {
            attrs.insert(ix.partition.name.clone(), ix.partition.kind);
            let mut schema =
                vec![KeySchemaElement::builder().attribute_name(&ix.partition.name).key_type(KeyType::Hash).build().map_err(invalid)?];
            if let Some(s) = &ix.sort {
                attrs.insert(s.name.clone(), s.kind);
                schema.push(KeySchemaElement::builder().attribute_name(&s.name).key_type(KeyType::Range).build().map_err(invalid)?);
            }
            gsis.push(
                GlobalSecondaryIndex::builder()
                    .index_name(&ix.name)
                    .set_key_schema(Some(schema))
                    .projection(Projection::builder().projection_type(ProjectionType::All).build())
                    .build()
                    .map_err(invalid)?,
            );
        }
        let definitions = attrs
            .iter()
            .map(|(n, k)| AttributeDefinition::builder().attribute_name(n).attribute_type(scalar(*k)).build().map_err(invalid))
            .collect::<PortResult<Vec<_>>>()?;
        let result = ddb
            .create_table()
            .table_name(format!("{}{}", aws.prefix(), t.name))
            .billing_mode(BillingMode::PayPerRequest)
            .set_attribute_definitions(Some(definitions))
            .key_schema(KeySchemaElement::builder().attribute_name("pk").key_type(KeyType::Hash).build().map_err(invalid)?)
            .key_schema(KeySchemaElement::builder().attribute_name("sk").key_type(KeyType::Range).build().map_err(invalid)?)
            .set_global_secondary_indexes((!gsis.is_empty()).then_some(gsis))
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if code(&e) == Some("ResourceInUseException") => continue,
            Err(e) => return Err(port_error("CreateTable", e)),
        }
        if let Some(attr) = &t.ttl_attr {
            let spec = TimeToLiveSpecification::builder().attribute_name(attr).enabled(true).build().map_err(invalid)?;
            ddb.update_time_to_live()
                .table_name(format!("{}{}", aws.prefix(), t.name))
                .time_to_live_specification(spec)
                .send()
                .await
                .map_err(|e| port_error("UpdateTimeToLive", e))?;
        }
    }
    let sqs = aws.queue_client();
    // Dead-letter queues first, so that their ARNs exist for the redrive policies.
    let mut ordered: Vec<_> = resources.queues.iter().collect();
    ordered.sort_by_key(|q| q.dead_letter_queue.is_some());
    for q in ordered {
        let mut create = sqs
            .create_queue()
            .queue_name(format!("{}{}", aws.prefix(), q.name))
            .attributes(QueueAttributeName::VisibilityTimeout, q.visibility_timeout.as_secs().to_string())
            .attributes(QueueAttributeName::DelaySeconds, q.delay.as_secs().to_string());
        if let Some(dlq) = &q.dead_letter_queue {
            let url = aws.queue.url(dlq).await?;
            let attrs = sqs
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .map_err(|e| port_error("GetQueueAttributes", e))?;
            let arn = attrs.attributes.unwrap_or_default().remove(&QueueAttributeName::QueueArn).unwrap_or_default();
            let policy = serde_json::json!({ "deadLetterTargetArn": arn, "maxReceiveCount": q.max_receive_count }).to_string();
            create = create.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        create.send().await.map_err(|e| port_error("CreateQueue", e))?;
    }
    #[cfg(feature = "s3")]
    for b in &resources.buckets {
        let s3 = aws.blob_client();
        match s3.create_bucket().bucket(format!("{}{b}", aws.prefix())).send().await {
            Ok(_) => {}
            Err(e) if matches!(code(&e), Some("BucketAlreadyOwnedByYou" | "BucketAlreadyExists")) => {}
            Err(e) => return Err(port_error("CreateBucket", e)),
        }
    }
    Ok(())
}
