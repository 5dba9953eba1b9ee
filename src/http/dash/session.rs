//! Dashboard sessions: signed cookies and CSRF tokens, with no server-side session table.
//!
//! A cookie is `kind.subject.expiry.login.mac`, the MAC (HMAC-SHA256 under a key derived from
//! the master key) covering the kind, subject, expiry, a random login id, the hash of the
//! credential that opened it (the admin token's hash, or the partner's API-key hash) and, for a
//! partner, the revision of the activation it was issued under (see [`binding`]): changing the
//! admin token or replacing a partner ends its sessions, and so does deactivating a partner,
//! for good: reactivating it does not bring an older cookie back. While the partner is
//! inactive its cookie is answered as its key is (403 on `/v1`, see [`from_request_status`]).
//!
//! Signing out revokes that one login: its id goes into an in-memory set that [`verify`]
//! consults, so the cookie is refused even if replayed. There is one set per holder (the
//! operator, and each partner). An id is dropped from its set once the login could no longer be
//! valid anyway ([`LIFETIME_S`] after it was revoked); a holder's set holds at most
//! [`MAX_REVOKED`] ids, and past that every login of that holder issued so far is refused (that
//! holder signs in again) rather than any revoked one coming back. Nobody else's logins are
//! touched: a partner signing out in a loop only ever signs itself out. Each sign-out is also
//! written to the key store (`signouts`, until the cookie's expiry) before it is answered, and
//! the sets are loaded from there at start-up ([`load_signouts`]): a cookie signed out before a
//! restart stays refused (before session 26 a restart forgot them, and it worked again).
//!
//! Invariants: a cookie authenticates reads (GET/HEAD) on its own; any other method also needs
//! the `X-CSRF-Token` header (or a `csrf` form field on the logout forms) equal to the token
//! derived from that same cookie, which only a page served to the cookie's holder carries.
//! Cookies are `HttpOnly; SameSite=Strict`, and `Secure` when the public URL is https.

use crate::app::App;
use crate::core::{PartnerId, SecretHash};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};
use subtle::ConstantTimeEq;

pub const ADMIN_COOKIE: &str = "pg_admin";
pub const PARTNER_COOKIE: &str = "pg_partner";
pub const LANG_COOKIE: &str = "pg_lang";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a dashboard login lasts.
pub const LIFETIME_S: i64 = 12 * 3600;

/// Who a valid dashboard cookie speaks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holder {
    Admin,
    Partner(PartnerId),
}

impl Holder {
    fn cookie_name(self) -> &'static str {
        match self {
            Holder::Admin => ADMIN_COOKIE,
            Holder::Partner(_) => PARTNER_COOKIE,
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Holder::Admin => "a",
            Holder::Partner(_) => "p",
        }
    }

    fn subject(self) -> String {
        match self {
            Holder::Admin => "-".into(),
            Holder::Partner(id) => id.to_string(),
        }
    }
}

/// The value of the named cookie in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// What a holder's cookies are bound to: the credential, and for a partner the revision of the
/// partner stream's event that opened its current (or, while inactive, its last) active period.
struct Binding {
    credential: SecretHash,
    epoch: u64,
    /// Whether the holder may use its cookies now (a partner that is not deactivated).
    active: bool,
}

/// The binding of a holder's cookies, if the holder (still) exists.
///
/// A partner's revision is that of its last `PartnerCreated`, `PartnerActivated` or
/// `PartnerDeactivated` (the only events of its stream). While it is active, that event opened
/// the current active period; while it is inactive, it is the deactivation, which directly
/// follows the event that opened the period it ended (setting a partner to the state it is in
/// records nothing), one revision earlier. Revisions only grow, so a cookie issued before a
/// deactivation never matches an active period again.
fn binding(app: &App, holder: Holder) -> Option<Binding> {
    match holder {
        Holder::Admin => app.admin.hash().cloned().map(|credential| Binding {
            credential,
            epoch: 0,
            active: true,
        }),
        Holder::Partner(id) => app.read(|s| {
            s.partner(id).map(|p| Binding {
                credential: p.api_key_hash.clone(),
                epoch: if p.active {
                    p.revision
                } else {
                    p.revision.saturating_sub(1)
                },
                active: p.active,
            })
        }),
    }
}

fn mac(app: &App, kind: &str, subject: &str, expiry: i64, login: &str, bound: &Binding) -> String {
    hex::encode(app.keys.dash_mac(&[
        kind.as_bytes(),
        b"\0",
        subject.as_bytes(),
        b"\0",
        expiry.to_string().as_bytes(),
        b"\0",
        login.as_bytes(),
        b"\0",
        bound.credential.0.as_bytes(),
        b"\0",
        bound.epoch.to_string().as_bytes(),
    ]))
}

/// Most revoked logins remembered at once per holder (see the module documentation).
pub const MAX_REVOKED: usize = 4_096;

/// Holder sets kept before the empty, expired ones are swept.
const SWEEP_HOLDERS_AT: usize = 256;

/// One holder's signed-out logins, by id, with when they were revoked; and a floor: a login of
/// this holder issued at or before `floor` (Unix seconds) is refused (set when its id set
/// overflows).
struct HolderRevoked {
    ids: HashMap<String, Instant>,
    floor: i64,
}

impl Default for HolderRevoked {
    fn default() -> Self {
        HolderRevoked {
            ids: HashMap::new(),
            floor: i64::MIN,
        }
    }
}

/// The holders' sets, by [`scope`].
type Revoked = HashMap<String, HolderRevoked>;

/// One map per process: a holder's scope is a MAC under the server's key, so servers sharing a
/// process (tests) cannot revoke each other's logins.
static REVOKED: LazyLock<Mutex<Revoked>> = LazyLock::new(|| Mutex::new(HashMap::new()));

fn revoked() -> std::sync::MutexGuard<'static, Revoked> {
    // The map is consistent after any panic (inserts and removes only), so a poisoned lock is
    // still usable.
    REVOKED.lock().unwrap_or_else(|e| e.into_inner())
}

/// The key of a holder's revocation set: this server's, this holder's.
fn scope(app: &App, kind: &str, subject: &str) -> String {
    hex::encode(
        &app.keys
            .dash_mac(&[b"revoked\0", kind.as_bytes(), b"\0", subject.as_bytes()])[..16],
    )
}

/// A fresh cookie value for `holder`, valid for [`LIFETIME_S`].
pub fn issue(app: &App, holder: Holder) -> Option<String> {
    use crate::app::clock::Rng;
    let bound = binding(app, holder).filter(|b| b.active)?;
    let expiry = app.clock.now().timestamp() + LIFETIME_S;
    let (kind, subject) = (holder.kind(), holder.subject());
    let login = hex::encode(crate::app::clock::OsRng.bytes16());
    Some(format!(
        "{kind}.{subject}.{expiry}.{login}.{}",
        mac(app, kind, &subject, expiry, &login, &bound)
    ))
}

/// A cookie value's parts: (kind, subject, expiry, login id, MAC).
fn parts(value: &str) -> Option<(&str, &str, i64, &str, &str)> {
    let mut parts = value.split('.');
    let (kind, subject, expiry, login, presented) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() {
        return None;
    }
    Some((kind, subject, expiry.parse().ok()?, login, presented))
}

/// The holder of a cookie value, if its MAC verifies, it has not expired, it was not signed
/// out and its credential still stands (a partner still active, in the period it was issued).
pub fn verify(app: &App, value: &str) -> Option<Holder> {
    verify_status(app, value).and_then(|(holder, active)| active.then_some(holder))
}

/// [`verify`], except that the cookie of a partner that is inactive now (and has not been
/// reactivated since the cookie was issued) is returned too, with `false`: the caller answers
/// it as it answers the key of an inactive partner.
fn verify_status(app: &App, value: &str) -> Option<(Holder, bool)> {
    let (kind, subject, expiry, login, presented) = parts(value)?;
    if expiry <= app.clock.now().timestamp() {
        return None;
    }
    let holder = match kind {
        "a" if subject == "-" => Holder::Admin,
        "p" => Holder::Partner(PartnerId::parse(subject)?),
        _ => return None,
    };
    let bound = binding(app, holder)?;
    let expected = mac(app, kind, subject, expiry, login, &bound);
    if !bool::from(expected.as_bytes().ct_eq(presented.as_bytes())) {
        return None;
    }
    let r = revoked();
    let refused = r
        .get(&scope(app, kind, subject))
        .is_some_and(|h| expiry - LIFETIME_S <= h.floor || h.ids.contains_key(login));
    (!refused).then_some((holder, bound.active))
}

/// Signs out the login of a cookie value (which [`verify`] accepted): from now on it is
/// refused.
pub fn revoke(app: &App, value: &str) {
    revoke_capped(app, value, MAX_REVOKED);
}

/// [`revoke`] with at most `cap` ids remembered for the cookie's holder.
fn revoke_capped(app: &App, value: &str, cap: usize) {
    let Some((kind, subject, expiry, login, _)) = parts(value) else {
        return;
    };
    let key = scope(app, kind, subject);
    let now = Instant::now();
    let lifetime = Duration::from_secs(LIFETIME_S as u64);
    let now_s = app.clock.now().timestamp();
    let live = |at: &Instant| now.saturating_duration_since(*at) < lifetime;
    let mut r = revoked();
    if r.len() >= SWEEP_HOLDERS_AT {
        r.retain(|_, h| {
            h.ids.retain(|_, at| live(at));
            !h.ids.is_empty() || h.floor > now_s - LIFETIME_S
        });
    }
    let h = r.entry(key.clone()).or_default();
    h.ids.retain(|_, at| live(at));
    if h.ids.len() >= cap {
        h.ids.clear();
        h.floor = now_s;
        drop(r); // the key store's write (an fsync) holds no one else's sign-in check
        persist(app, &key, FLOOR, now_s + LIFETIME_S, now_s, true);
        tracing::warn!(
            holder = if kind == "a" { "admin" } else { subject },
            "more than {cap} dashboard logins of one holder signed out within {LIFETIME_S} s: \
             every dashboard login of that holder issued so far is now refused"
        );
        return;
    }
    h.ids.insert(login.to_string(), now);
    drop(r);
    persist(
        app,
        &key,
        login,
        expiry.min(now_s + LIFETIME_S),
        now_s,
        false,
    );
}

/// The login id that stands for a holder's floor in the key store (`until` − [`LIFETIME_S`]
/// is the floor): no cookie's login id has a `*`.
const FLOOR: &str = "*floor";

/// Writes a sign-out to the key store. A failure is logged: the sign-out still holds until
/// the process stops.
fn persist(app: &App, scope: &str, login: &str, until: i64, now: i64, floor: bool) {
    if let Err(e) = app.keystore.record_signout(scope, login, until, now, floor) {
        tracing::error!(error = %e, "cannot record a dashboard sign-out: it holds until the server stops");
    }
}

/// Loads the sign-outs the key store keeps (those of earlier runs still in force) into the
/// sets [`verify`] consults. Called once at start-up.
pub fn load_signouts(app: &App) {
    let now_s = app.clock.now().timestamp();
    let rows = match app.keystore.signouts(now_s) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the dashboard sign-outs: logins signed out before this start are accepted until they expire");
            return;
        }
    };
    let now = Instant::now();
    let mut r = revoked();
    for (scope, login, until) in rows {
        let h = r.entry(scope).or_default();
        if login == FLOOR {
            h.floor = h.floor.max(until - LIFETIME_S);
        } else {
            h.ids.insert(login, now);
        }
    }
}

/// The CSRF token that goes with a cookie value.
pub fn csrf_token(app: &App, cookie_value: &str) -> String {
    hex::encode(&app.keys.dash_mac(&[b"csrf\0", cookie_value.as_bytes()])[..16])
}

fn csrf_ok(app: &App, cookie_value: &str, presented: Option<&str>) -> bool {
    let expected = csrf_token(app, cookie_value);
    presented.is_some_and(|p| bool::from(expected.as_bytes().ct_eq(p.as_bytes())))
}

/// The holder a request's cookie authenticates for `wanted` (admin or any partner), honouring
/// the CSRF rule for methods other than GET and HEAD.
pub fn from_request(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    admin: bool,
) -> Option<Holder> {
    from_request_status(app, method, headers, admin)
        .and_then(|(holder, active)| active.then_some(holder))
}

/// [`from_request`], also returning the cookie of a partner that is inactive now, with
/// `false` (see [`verify_status`]): the `/v1` gate answers it 403 as it does that partner's key.
pub fn from_request_status(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
    admin: bool,
) -> Option<(Holder, bool)> {
    let name = if admin { ADMIN_COOKIE } else { PARTNER_COOKIE };
    let value = cookie(headers, name)?;
    let (holder, active) = verify_status(app, value)?;
    if holder.cookie_name() != name {
        return None;
    }
    let safe = method == Method::GET || method == Method::HEAD;
    let presented = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    (safe || csrf_ok(app, value, presented)).then_some((holder, active))
}

/// The dashboard login a long-lived answer (a server-sent event stream) was opened with, kept
/// so that the answer can re-check it while it runs: [`verify`] is only asked at connect
/// otherwise, and a stream would outlive its sign-out, its expiry and a change of credential.
#[derive(Clone, Debug)]
pub struct Login {
    value: String,
    holder: Holder,
    expiry: chrono::DateTime<chrono::Utc>,
}

impl Login {
    /// The login of the request's dashboard cookie (`admin`: the operator's, else a partner's),
    /// if it is valid now; as [`from_request`] for a read.
    pub fn of_request(app: &App, headers: &HeaderMap, admin: bool) -> Option<Login> {
        let name = if admin { ADMIN_COOKIE } else { PARTNER_COOKIE };
        let value = cookie(headers, name)?;
        let holder = verify(app, value)?;
        if holder.cookie_name() != name {
            return None;
        }
        let (_, _, expiry, _, _) = parts(value)?;
        Some(Login {
            value: value.to_string(),
            holder,
            expiry: chrono::DateTime::from_timestamp(expiry, 0)?,
        })
    }

    /// Whether the login still speaks for the same holder: not signed out, not expired, its
    /// credential unchanged (and a partner still active).
    pub fn still_valid(&self, app: &App) -> bool {
        verify(app, &self.value) == Some(self.holder)
    }

    /// When the login expires (it is refused from that instant on).
    pub fn expires_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.expiry
    }
}

/// Checks a CSRF token sent in a form field against the request's cookie.
pub fn form_csrf_ok(app: &App, headers: &HeaderMap, admin: bool, presented: &str) -> bool {
    let name = if admin { ADMIN_COOKIE } else { PARTNER_COOKIE };
    cookie(headers, name).is_some_and(|v| csrf_ok(app, v, Some(presented)))
}

fn secure(app: &App) -> &'static str {
    if app.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    }
}

/// `Set-Cookie` for a new login.
pub fn set_cookie(app: &App, admin: bool, value: &str) -> HeaderValue {
    let name = if admin { ADMIN_COOKIE } else { PARTNER_COOKIE };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Max-Age={LIFETIME_S}; HttpOnly; SameSite=Strict{}",
        secure(app)
    ))
    .expect("cookie characters are ASCII")
}

/// `Set-Cookie` that ends a login.
pub fn clear_cookie(app: &App, admin: bool) -> HeaderValue {
    let name = if admin { ADMIN_COOKIE } else { PARTNER_COOKIE };
    HeaderValue::from_str(&format!(
        "{name}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        secure(app)
    ))
    .expect("cookie characters are ASCII")
}

/// `Set-Cookie` remembering the chosen language for a year.
pub fn lang_cookie(code: &str) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{LANG_COOKIE}={code}; Path=/; Max-Age=31536000; SameSite=Lax"
    ))
    .expect("language codes are ASCII")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::app::Parts;
    use crate::app::clock::{ManualClock, Rng, SeededRng};
    use crate::app::secrets::{hash_secret, new_api_key};
    use crate::core::Command;
    use std::sync::Arc;

    /// A server on a manual clock with `n` partners: (its directory, the app, the clock, the
    /// partners).
    pub(crate) async fn app_with_partners(
        n: usize,
    ) -> (
        tempfile::TempDir,
        Arc<App>,
        Arc<ManualClock>,
        Vec<PartnerId>,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store =
            Arc::new(crate::store::SqliteStore::open(dir.path().join("events.db")).unwrap());
        let keystore = crate::app::keystore::KeyStore::open(&dir.path().join("keys.db")).unwrap();
        let env = [(
            "PALMGATE_ADMIN_TOKEN".to_string(),
            "an-admin-token-long-enough-for-the-checks-0123456789".to_string(),
        )];
        let config = crate::config::Config::load(None, &env).unwrap();
        let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
        let rng = Arc::new(SeededRng::new(1));
        let (app, _effects) = App::new(
            config,
            Parts {
                store,
                keystore,
                clock: clock.clone(),
                rng: rng.clone(),
                keys: crate::app::secrets::Keys::from_master(&crate::app::clock::OsRng.bytes32()),
                public_url: "http://gate.test".into(),
            },
        )
        .unwrap();
        let mut partners = Vec::new();
        for i in 0..n {
            let partner_id = PartnerId::from_random(rng.bytes16());
            app.execute(Command::CreatePartner {
                partner_id,
                name: format!("P{i}"),
                api_key_hash: hash_secret(&new_api_key(rng.bytes32())),
                webhook: None,
            })
            .await
            .unwrap();
            partners.push(partner_id);
        }
        (dir, app, clock, partners)
    }

    /// A partner signing out more logins than its set holds signs out its own older logins, and
    /// nobody else's: the operator's and another partner's cookies stay valid.
    #[tokio::test]
    async fn overflowing_one_holders_revocations_signs_out_that_holder_only() {
        let (_dir, app, clock, partners) = app_with_partners(2).await;
        let (noisy, quiet) = (Holder::Partner(partners[0]), Holder::Partner(partners[1]));
        let admin = issue(&app, Holder::Admin).unwrap();
        let other = issue(&app, quiet).unwrap();
        let own_older = issue(&app, noisy).unwrap();
        let cap = 8;
        for _ in 0..=cap {
            let c = issue(&app, noisy).unwrap();
            assert_eq!(verify(&app, &c), Some(noisy));
            revoke_capped(&app, &c, cap);
            assert_eq!(verify(&app, &c), None, "a signed-out login is refused");
        }
        assert_eq!(
            verify(&app, &own_older),
            None,
            "the holder's older login is refused"
        );
        assert_eq!(
            verify(&app, &admin),
            Some(Holder::Admin),
            "the operator stays signed in"
        );
        assert_eq!(
            verify(&app, &other),
            Some(quiet),
            "another partner stays signed in"
        );
        // The overflowing holder signs in again.
        clock.advance(chrono::Duration::seconds(1));
        let fresh = issue(&app, noisy).unwrap();
        assert_eq!(verify(&app, &fresh), Some(noisy));
        // The operator's own overflow is the operator's only.
        for _ in 0..=cap {
            let c = issue(&app, Holder::Admin).unwrap();
            revoke_capped(&app, &c, cap);
        }
        assert_eq!(verify(&app, &admin), None);
        assert_eq!(verify(&app, &other), Some(quiet));
        assert_eq!(verify(&app, &fresh), Some(noisy));
    }
}
