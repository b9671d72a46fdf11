//! Finding products: the datasets a caller may see, a dataset's products by time range, bounding box and
//! property equality, and one product; each product with its files as an order sees them. The same
//! routes under `/public` answer anonymous callers with the `public` datasets only (API Gateway's JWT
//! authorizer guards a route or not, so reading with and without a token are two routes).

use crate::answers::{DatasetAnswer, Link, PageMetadata, ProductAnswer, ProductPage};
use crate::{FeatureApi, RouteResult, form_encode, unavailable_on};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use granary_domain::Urn;
use granary_domain::catalog::{ProductSearch, Reader, access_groups, dataset_label, dataset_uuid, product_files};
use granary_lambda::http::{bad_request, json, not_found};
use lambda_http::{Request, RequestExt};
use serde_json::Value;

/// Products per page unless `size` says otherwise.
const DEFAULT_PAGE: usize = 20;
/// Most products per page.
const MAX_PAGE: usize = 500;

impl FeatureApi {
    /// The locations in force (configured and admin-defined), to tell online files from nearline ones.
    pub(crate) async fn all_locations(&self) -> Result<granary_domain::storage::Locations, Box<lambda_http::Response<lambda_http::Body>>> {
        let mut locations = self.config.locations();
        locations.extend(self.locations.list(&self.backend).await.map_err(|e| Box::new(unavailable_on(e)))?);
        Ok(locations)
    }

    /// `GET /datasets`: the datasets `reader` may see, each with its files.
    pub(crate) async fn list_datasets(&self, reader: &Reader) -> RouteResult {
        let locations = self.all_locations().await.map_err(|b| *b)?;
        let datasets = self.catalog.visible_datasets(&self.backend, reader).await.map_err(unavailable_on)?;
        let content: Vec<DatasetAnswer> = datasets.iter().map(|d| dataset_answer(d, &locations)).collect();
        let metadata = PageMetadata { size: content.len(), number_of_elements: content.len() };
        Ok(json(200, &crate::answers::DatasetPage { content, metadata, links: vec![] }))
    }

    /// `GET /datasets/{dataset}/products?from=&to=&bbox=&property.<name>=&size=&page=`: a page of the
    /// dataset's products that match, in the catalog's order; `page` is the cursor of the `next` link.
    pub(crate) async fn search_products(&self, reader: &Reader, dataset: &str, req: &Request, base: &str) -> RouteResult {
        let params = req.query_string_parameters();
        let pairs: Vec<(&str, &str)> = params.iter().collect();
        let mut errors = Vec::new();
        let search = ProductSearch::from_params(pairs.iter().copied(), &["size", "page"]).unwrap_or_else(|e| {
            errors.extend(e);
            ProductSearch::default()
        });
        let size = match params.first("size").map(str::parse::<usize>) {
            None => DEFAULT_PAGE,
            Some(Ok(n)) if (1..=MAX_PAGE).contains(&n) => n,
            Some(_) => {
                errors.push(format!("size: must be 1 to {MAX_PAGE}"));
                DEFAULT_PAGE
            }
        };
        let after = match params.first("page") {
            None => None,
            Some(p) => match URL_SAFE_NO_PAD.decode(p).ok().and_then(|b| uuid::Uuid::from_slice(&b).ok()) {
                Some(u) => Some(u),
                None => {
                    errors.push("page: not a cursor this API handed out".into());
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(bad_request("invalid product search", &errors));
        }
        if self.catalog.visible_dataset(&self.backend, reader, dataset).await.map_err(unavailable_on)?.is_none() {
            return Err(not_found(&format!("no dataset {dataset}")));
        }
        let locations = self.all_locations().await.map_err(|b| *b)?;
        let (products, next) = self
            .catalog
            .search(&self.backend, dataset_uuid(dataset), &search, &self.config.search_date_property, after, size)
            .await
            .map_err(unavailable_on)?;
        let mut links = Vec::new();
        if let Some(next) = next {
            let mut query: Vec<String> =
                pairs.iter().filter(|(k, _)| *k != "page").map(|(k, v)| format!("{k}={}", form_encode(v))).collect();
            query.push(format!("page={}", URL_SAFE_NO_PAD.encode(next.as_bytes())));
            links.push(Link { rel: "next".into(), href: format!("{base}/datasets/{}/products?{}", form_encode(dataset), query.join("&")) });
        }
        let content: Vec<ProductAnswer> = products.iter().map(|p| product_answer(p, &locations)).collect();
        let metadata = PageMetadata { size, number_of_elements: content.len() };
        Ok(json(200, &ProductPage { content, metadata, links }))
    }

    /// `GET /products/{urn}`: one product version with its files; 404 when it does not exist or none
    /// of its datasets is visible to `reader`.
    pub(crate) async fn get_product(&self, reader: &Reader, urn_text: &str) -> RouteResult {
        let missing = || not_found(&format!("no product {urn_text}"));
        let urn: Urn = urn_text.parse().map_err(|e: granary_domain::UrnError| bad_request("invalid URN", &[format!("urn: {e}")]))?;
        if urn.tenant != self.config.tenant {
            return Err(missing());
        }
        let Some(stored) = self.features.get(&self.backend, &urn).await.map_err(unavailable_on)? else { return Err(missing()) };
        // Admins see every product, even one in no dataset.
        if !reader.admin && self.catalog.visible_through(&self.backend, reader, &stored.feature).await.map_err(unavailable_on)?.is_none() {
            return Err(missing());
        }
        let locations = self.all_locations().await.map_err(|b| *b)?;
        let mut answer = product_answer(&stored.feature, &locations);
        answer.last = Some(stored.last);
        Ok(json(200, &answer))
    }
}

fn text(v: &Value, name: &str) -> String {
    v.get(name).and_then(Value::as_str).unwrap_or_default().to_owned()
}

fn product_answer(p: &Value, locations: &granary_domain::storage::Locations) -> ProductAnswer {
    ProductAnswer {
        urn: text(p, "urn"),
        provider_id: text(p, "id"),
        entity_type: text(p, "entityType"),
        model: text(p, "model"),
        tags: p.get("tags").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect(),
        geometry: p.get("geometry").cloned().unwrap_or(Value::Null),
        properties: p.get("properties").cloned().unwrap_or(Value::Null),
        files: product_files(p, locations),
        last: None,
    }
}

fn dataset_answer(d: &Value, locations: &granary_domain::storage::Locations) -> DatasetAnswer {
    DatasetAnswer {
        urn: text(d, "urn"),
        provider_id: text(d, "id"),
        label: dataset_label(d),
        access_groups: access_groups(d).into_iter().map(str::to_owned).collect(),
        properties: d.get("properties").cloned().unwrap_or(Value::Null),
        files: product_files(d, locations),
    }
}
