//! Customers and their personal data: create, list and search, read, rectify.
//!
//! Personal data is masked in every response unless it is revealed: to the customer itself,
//! or with `?unmasked=true` to a holder of `customers:read_pii` (each such read is audited).
//! Search values travel in the query string (`?email=…`); the request log records only the
//! route template, never the query (see `middleware::request_id`). None of these wire types
//! derives `Debug`: they carry personal data.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Recorded;
use crate::clock::Timestamp;
use crate::domain::personal::{AddressInput, NationalIdInput, ProfileInput};
use crate::http::error::{ApiResult, ErrorBody};
use crate::http::extract::{ApiJson, ApiQuery};
use crate::http::state::AppState;
use crate::http::views::{List, page};
use crate::ids::CustomerId;
use crate::service::customers::{self, CustomerDetails, NewCustomerInput, SearchInput};
use crate::service::{Principal, RequestMeta};

fn ts(micros: i64) -> String {
    Timestamp::from_micros(micros).to_rfc3339()
}

// ---------------------------------------------------------------- wire types

/// A postal address.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    /// 1-100 characters.
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    /// State, province or county.
    pub region: Option<String>,
    /// 2-16 letters, digits, spaces or hyphens.
    pub postal_code: Option<String>,
    /// ISO 3166-1 alpha-2, e.g. `NG`.
    pub country: String,
}

impl From<AddressBody> for AddressInput {
    fn from(a: AddressBody) -> Self {
        Self {
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            region: a.region,
            postal_code: a.postal_code,
            country: a.country,
        }
    }
}

/// A national identifier.
#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NationalIdBody {
    /// `BVN` (11 digits), `NIN` (11 digits), `SSN` (`NNN-NN-NNNN` or 9 digits), `ZA_ID`
    /// (13 digits with a valid date and check digit) or `PASSPORT` (6-9 letters or digits).
    #[serde(rename = "type")]
    pub kind: String,
    pub number: String,
}

impl From<NationalIdBody> for NationalIdInput {
    fn from(n: NationalIdBody) -> Self {
        Self {
            kind: n.kind,
            number: n.number,
        }
    }
}

/// A new customer. Personal data is optional (a record may start with only a reference), but
/// as soon as any is given, `first_name` and `last_name` are required.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCustomerRequest {
    /// Link to a user holding the CUSTOMER role, so that user sees this customer's accounts.
    pub user_id: Option<String>,
    /// Your own reference for this customer (1-128 characters).
    pub external_ref: Option<String>,
    /// 1-100 letters, spaces, apostrophes, hyphens or periods.
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    /// E.164: `+` then 8-15 digits (spaces, hyphens, periods and parentheses are dropped).
    pub phone: Option<String>,
    /// `YYYY-MM-DD`, in the past and at most 130 years ago.
    pub date_of_birth: Option<String>,
    pub address: Option<AddressBody>,
    /// ISO 3166-1 alpha-2, e.g. `NG`.
    pub nationality: Option<String>,
    /// At most 10.
    pub national_ids: Option<Vec<NationalIdBody>>,
}

impl CreateCustomerRequest {
    fn into_input(self) -> NewCustomerInput {
        NewCustomerInput {
            user_id: self.user_id,
            external_ref: self.external_ref,
            profile: ProfileInput {
                first_name: self.first_name.map(Some),
                last_name: self.last_name.map(Some),
                email: self.email.map(Some),
                phone: self.phone.map(Some),
                date_of_birth: self.date_of_birth.map(Some),
                address: self.address.map(|a| Some(a.into())),
                nationality: self.nationality.map(Some),
                national_ids: self
                    .national_ids
                    .map(|l| Some(l.into_iter().map(Into::into).collect())),
            },
        }
    }
}

/// A present field, even when `null` (so `null` can mean "remove").
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A rectification: any subset of the personal data. An absent field is left as it is; `null`
/// removes an optional field (names cannot be removed); `address` and `national_ids` are
/// replaced as a whole.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RectifyCustomerRequest {
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub first_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub last_name: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub phone: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub date_of_birth: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<AddressBody>)]
    pub address: Option<Option<AddressBody>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub nationality: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<Vec<NationalIdBody>>)]
    pub national_ids: Option<Option<Vec<NationalIdBody>>>,
}

impl RectifyCustomerRequest {
    fn into_input(self) -> ProfileInput {
        ProfileInput {
            first_name: self.first_name,
            last_name: self.last_name,
            email: self.email,
            phone: self.phone,
            date_of_birth: self.date_of_birth,
            address: self.address.map(|a| a.map(Into::into)),
            nationality: self.nationality,
            national_ids: self
                .national_ids
                .map(|l| l.map(|l| l.into_iter().map(Into::into).collect())),
        }
    }
}

/// An address, masked (only `city` and `country` shown) or in full.
#[derive(Serialize, ToSchema)]
pub struct AddressView {
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: Option<String>,
    pub country: String,
}

/// A national identifier, masked (`***` and the last 4) or in full.
#[derive(Serialize, ToSchema)]
pub struct NationalIdView {
    #[serde(rename = "type")]
    pub kind: String,
    pub number: String,
}

/// A customer. Personal data fields are `null` when not recorded (or erased).
#[derive(Serialize, ToSchema)]
pub struct CustomerView {
    /// Always `customer`.
    pub object: &'static str,
    pub id: String,
    pub user_id: Option<String>,
    pub external_ref: Option<String>,
    /// `active` or `erased`.
    pub status: String,
    /// Whether the personal data below is masked (`J***`, `j***@example.com`, `***4567`, …).
    pub masked: bool,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `YYYY-MM-DD`, or `****-**-**` masked.
    pub date_of_birth: Option<String>,
    pub address: Option<AddressView>,
    pub nationality: Option<String>,
    pub national_ids: Vec<NationalIdView>,
    pub created_at: String,
    pub updated_at: Option<String>,
}

impl From<CustomerDetails> for CustomerView {
    fn from(d: CustomerDetails) -> Self {
        let text = d.profile_text();
        let masked = text.is_some() && !d.revealed;
        let c = d.record;
        let (mut view, text) = (
            Self {
                object: "customer",
                id: c.id,
                user_id: c.user_id,
                external_ref: c.external_ref,
                status: c.status,
                masked,
                first_name: None,
                last_name: None,
                email: None,
                phone: None,
                date_of_birth: None,
                address: None,
                nationality: None,
                national_ids: Vec::new(),
                created_at: ts(c.created_at),
                updated_at: c.updated_at.map(ts),
            },
            text,
        );
        if let Some(t) = text {
            view.first_name = Some(t.first_name);
            view.last_name = Some(t.last_name);
            view.email = t.email;
            view.phone = t.phone;
            view.date_of_birth = t.date_of_birth;
            view.address = t.address.map(|a| AddressView {
                line1: a.line1,
                line2: a.line2,
                city: a.city,
                region: a.region,
                postal_code: a.postal_code,
                country: a.country,
            });
            view.nationality = t.nationality;
            view.national_ids = t
                .national_ids
                .into_iter()
                .map(|(kind, number)| NationalIdView { kind, number })
                .collect();
        }
        view
    }
}

/// Listing and exact-match search. At most one criterion: `email`, `phone`, or
/// `national_id_type` with `national_id`.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerListQuery {
    /// 1 to 100 (default 20).
    pub limit: Option<u32>,
    /// The id of the last object of the previous page.
    pub starting_after: Option<String>,
    /// `true`: personal data in full (needs `customers:read_pii`; every customer returned is
    /// recorded in the audit log as read).
    pub unmasked: Option<bool>,
    /// Exact match, case-insensitive.
    pub email: Option<String>,
    /// Exact match on the E.164 number.
    pub phone: Option<String>,
    /// With `national_id`: `BVN`, `NIN`, `SSN`, `ZA_ID` or `PASSPORT`.
    pub national_id_type: Option<String>,
    pub national_id: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CustomerGetQuery {
    /// `true`: personal data in full (needs `customers:read_pii`; the read is audited).
    pub unmasked: Option<bool>,
}

// ---------------------------------------------------------------- handlers

/// Create a customer, with its personal data (encrypted at rest; the answer is masked).
#[utoipa::path(post, path = "/v1/customers", operation_id = "createCustomer", tag = "customers", security(("bearer" = [])), request_body = CreateCustomerRequest, responses(
    (status = 201, body = CustomerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
))]
pub async fn create(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiJson(body): ApiJson<CreateCustomerRequest>,
) -> ApiResult<Recorded<Json<CustomerView>>> {
    let c = customers::create(&state.core, &meta, &principal, body.into_input()).await?;
    Ok(Recorded(StatusCode::CREATED, Json(c.into())))
}

/// List customers, newest first, or find them by exact email, phone or national id (a CUSTOMER
/// sees only its own record).
#[utoipa::path(get, path = "/v1/customers", operation_id = "listCustomers", tag = "customers", security(("bearer" = [])), params(CustomerListQuery), responses(
    (status = 200, body = List<CustomerView>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    ApiQuery(q): ApiQuery<CustomerListQuery>,
) -> ApiResult<Json<List<CustomerView>>> {
    let page = page(q.limit, q.starting_after, |c| {
        CustomerId::parse(c).is_some()
    })?;
    let search = SearchInput {
        email: q.email,
        phone: q.phone,
        national_id_type: q.national_id_type,
        national_id: q.national_id,
    };
    let listed = customers::list(
        &state.core,
        &meta,
        &principal,
        search,
        &page,
        q.unmasked.unwrap_or(false),
    )
    .await?;
    Ok(Json(List::from(listed, CustomerView::from)))
}

/// Get one customer.
#[utoipa::path(get, path = "/v1/customers/{id}", operation_id = "getCustomer", tag = "customers", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)"), CustomerGetQuery), responses(
    (status = 200, body = CustomerView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
))]
pub async fn get(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CustomerGetQuery>,
) -> ApiResult<Json<CustomerView>> {
    let c = customers::get(
        &state.core,
        &meta,
        &principal,
        &id,
        q.unmasked.unwrap_or(false),
    )
    .await?;
    Ok(Json(c.into()))
}

/// Rectify a customer's personal data (any subset of fields; audited with the names of the
/// fields changed). An erased customer answers 422 `customer_erased`.
#[utoipa::path(patch, path = "/v1/customers/{id}", operation_id = "rectifyCustomer", tag = "customers", security(("bearer" = [])), params(("id" = String, Path, description = "Customer id (`cus_…`)")), request_body = RectifyCustomerRequest, responses(
    (status = 200, body = CustomerView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
))]
pub async fn rectify(
    State(state): State<Arc<AppState>>,
    meta: RequestMeta,
    principal: Principal,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<RectifyCustomerRequest>,
) -> ApiResult<Recorded<Json<CustomerView>>> {
    let c = customers::rectify(&state.core, &meta, &principal, &id, body.into_input()).await?;
    Ok(Recorded(StatusCode::OK, Json(c.into())))
}
