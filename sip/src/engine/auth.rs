//! Who may use the farm (with [`AuthMode::Digest`]): the checks a request from the network
//! passes before it is routed.
//!
//! - A REGISTER for one of our domains is challenged with 401 (`WWW-Authenticate`); the
//!   authenticated user must be the To's AOR, or the account the To's number is routed to
//!   (an account's own number is its alias: the REGISTER binds the account).
//! - Any other request whose From is in one of our domains is challenged with 407
//!   (`Proxy-Authenticate`); the authenticated user must be the From's AOR, or the account
//!   the From's number is routed to (caller ID). Once authenticated it may go anywhere: to
//!   our users, other domains, IP addresses, numbers.
//! - A request from elsewhere reaches only our users (our domains, this node) and numbers
//!   (`tel:` URIs, routed by the number registry to where their routing says); anything
//!   else gets 403: the farm is not an open relay.
//! - A request inside a dialog that we record-routed passes when its Route carries our
//!   signature for its Call-ID ([`crate::digest::NonceKeys::route_tag`]), which an outsider
//!   cannot forge; ACK and CANCEL are never challenged (RFC 3261 22.1), nor keep-alive
//!   OPTIONS to the node itself.
//!
//! The check is split: this node checks the realm, the user against the AOR and the nonce
//! (stateless, with the farm's keys), then the subscriber's registrar, which holds the HA1s
//! and the nonce counts, checks the response and the count ([`Output::Register`] with its
//! `auth`, or [`Output::Authenticate`]). Requests from other nodes were checked by the node
//! that received them.

use std::net::{IpAddr, SocketAddr};

use super::{AuthCheck, Engine, Env, LocateError, MediaHook, Output};
use crate::digest::{credentials_in_headers, Challenge, Credentials, NonceError};
use crate::transaction::TransactionKey;
use crate::typed::NameAddr;
use crate::{reply, Method, Request, Uri};

/// The Record-Route parameter carrying our signature of the dialog's Call-ID.
pub(super) const ROUTE_TAG: &str = "ohs";

/// What the checks decided.
pub(super) enum Gate {
    /// Route the request.
    Pass,
    /// Route the REGISTER, and have the registrar check these credentials.
    Register(Box<AuthCheck>),
    /// The request was answered, or waits for its credentials to be checked.
    Done,
}

/// A request waiting for its credentials to be checked, or a REGISTER carrying them.
#[derive(Debug, Clone)]
pub(super) struct AuthWait {
    /// The realm challenged (the AOR's domain).
    realm: String,
    /// 401 (registrar) or 407 (proxy).
    status: u16,
    /// Where the request came from, for the failure count.
    source: Option<IpAddr>,
}

impl<E: Env, M: MediaHook> Engine<E, M> {
    /// The checks of a new request from the network, in the order of the module
    /// documentation. `req` loses the credentials for our realm when it goes on.
    pub(super) fn admission(
        &mut self,
        key: &TransactionKey,
        req: &mut Request,
        source: Option<SocketAddr>,
    ) -> Gate {
        let ip = source.map(|s| s.ip());
        let to_us = self.targets_us(req);
        if req.method == Method::Options && req.uri.user().is_none() && to_us {
            // A keep-alive ping to the node or the domain.
            return Gate::Pass;
        }
        if req.headers.to().is_some_and(|t| t.tag().is_some()) && self.signed_route(req) {
            return Gate::Pass;
        }
        if req.method == Method::Register && to_us {
            let Some(to) = req.headers.to().and_then(|t| aor_of(&t)) else {
                self.respond_status_forget(key, 400, "Bad To");
                return Gate::Done;
            };
            if !self.local.domains.contains(&to.1) {
                self.respond_status_forget(key, 403, "Not Our Domain");
                return Gate::Done;
            }
            let number = self.plans.user_number(&to.0, &to.1);
            let Some(check) = self.credentials(key, req, &to, 401, ip, number.is_some()) else {
                return Gate::Done;
            };
            if let Some(number) = number.filter(|_| check.credentials.username != to.0) {
                // The To is a number and the credentials an account's: the account
                // registering its own number, once the number is shown to be routed to it.
                let account = format!("{}@{}", check.credentials.username, to.1);
                self.start_number_check(
                    key,
                    req.clone(),
                    super::numbers::NumberWait::Register {
                        number,
                        account,
                        check,
                        source,
                    },
                );
                return Gate::Done;
            }
            return Gate::Register(check);
        }
        let from = req.headers.from().and_then(|f| aor_of(&f));
        match from {
            Some(from) if self.local.domains.contains(&from.1) => {
                let number = self.plans.user_number(&from.0, &from.1);
                let Some(check) = self.credentials(key, req, &from, 407, ip, number.is_some())
                else {
                    return Gate::Done;
                };
                self.strip_credentials(req, &from.1);
                if let Some(number) = number.filter(|_| check.credentials.username != from.0) {
                    // From the account's own number (caller ID): the credentials are checked
                    // at the account once the number is shown to be routed to it.
                    let account = format!("{}@{}", check.credentials.username, from.1);
                    self.start_number_check(
                        key,
                        req.clone(),
                        super::numbers::NumberWait::From {
                            number,
                            account,
                            check,
                        },
                    );
                    return Gate::Done;
                }
                self.start_authenticate(key, req.clone(), from.2.clone(), check);
                Gate::Done
            }
            _ if to_us => Gate::Pass,
            _ => {
                self.respond_status_forget(key, 403, "Relaying Denied");
                Gate::Done
            }
        }
    }

    /// Has the registrar of `aor` check the credentials of `req` (waiting in `key`), which is
    /// routed once they pass ([`Self::on_authenticated`]).
    pub(super) fn start_authenticate(
        &mut self,
        key: &TransactionKey,
        req: Request,
        aor: String,
        check: Box<AuthCheck>,
    ) {
        if !self.may_wait(key) {
            return;
        }
        if let Some(entry) = self.servers.get_mut(key) {
            entry.request = Some(req);
        }
        self.pending += 1;
        self.out.push_back(Output::Authenticate {
            key: key.clone(),
            aor,
            auth: check,
        });
    }

    /// The credentials for `aor`'s realm, checked as far as this node can: `Some` to have
    /// the registrar finish the check; `None` when the request was answered (challenged,
    /// refused). The authenticated user must be `aor`'s, unless `number` (the AOR's user
    /// part is a number, which an account may use as its own: the caller checks whose it is).
    fn credentials(
        &mut self,
        key: &TransactionKey,
        req: &Request,
        aor: &(String, String, String),
        status: u16,
        ip: Option<IpAddr>,
        number: bool,
    ) -> Option<Box<AuthCheck>> {
        let (user, realm, _) = aor;
        if self.keys.is_none() {
            // The farm's nonce key has not reached this node yet.
            let resp = self.unavailable(req);
            self.respond_forget(key, resp);
            return None;
        }
        let header = if status == 401 {
            "Authorization"
        } else {
            "Proxy-Authorization"
        };
        if let Some(entry) = self.servers.get_mut(key) {
            entry.auth = Some(AuthWait {
                realm: realm.clone(),
                status,
                source: ip,
            });
        }
        let creds: Credentials = match credentials_in_headers(&req.headers, header, realm) {
            None => {
                self.challenge(key, false, true);
                return None;
            }
            Some(Err(_)) => {
                self.respond_status_forget(key, 400, "Malformed Credentials");
                return None;
            }
            Some(Ok(c)) => c,
        };
        if let Some(ip) = ip {
            if !self.env.admit(ip).allowed() {
                self.respond_status_forget(key, 403, "Too Many Failed Attempts");
                return None;
            }
        }
        if !self.cfg.algorithms.contains(&creds.algorithm) {
            // An algorithm this farm does not offer: the challenge lists those it does.
            self.challenge(key, false, true);
            return None;
        }
        if creds.username != *user && !number {
            self.respond_status_forget(key, 403, super::numbers::NOT_YOURS);
            return None;
        }
        let now_ms = self.wall_ms();
        let lifetime_ms = self.cfg.nonce_lifetime_ms;
        let issued_ms = match self
            .keys
            .as_ref()
            .map(|k| k.check(&creds.nonce, realm, now_ms, lifetime_ms))
        {
            Some(Ok(info)) => Some(info.issued_ms),
            Some(Err(NonceError::Expired)) => None,
            // Not a nonce of ours (or of a key since replaced): a fresh challenge.
            _ => {
                self.challenge(key, false, true);
                return None;
            }
        };
        Some(Box::new(AuthCheck {
            credentials: creds,
            method: req.method.as_str().to_string(),
            issued_ms,
            lifetime_ms,
        }))
    }

    /// Answers the request waiting in `key` with a fresh challenge (401 or 407); with
    /// `forget`, statelessly ([`Self::respond_forget`]).
    fn challenge(&mut self, key: &TransactionKey, stale: bool, forget: bool) {
        let Some(wait) = self.servers.get(key).and_then(|e| e.auth.clone()) else {
            return;
        };
        let Some(keys) = self.keys.as_ref() else {
            self.respond_unavailable(key);
            return;
        };
        self.nonce_seq += 1;
        let random =
            xxhash_rust::xxh3::xxh3_64_with_seed(&self.nonce_seq.to_be_bytes(), self.cfg.seed);
        let nonce = keys.issue(self.wall_ms(), random.to_be_bytes(), &wait.realm);
        let (header, reason) = if wait.status == 401 {
            ("WWW-Authenticate", "Unauthorized")
        } else {
            ("Proxy-Authenticate", "Proxy Authentication Required")
        };
        let Some(req) = self.servers.get(key).map(|e| e.txn.request()) else {
            return;
        };
        let mut resp = reply(req, wait.status, Some(reason), Some(&self.cfg.tag));
        for &algorithm in &self.cfg.algorithms {
            let value = Challenge {
                realm: wait.realm.clone(),
                nonce: nonce.clone(),
                algorithm,
                stale,
                opaque: None,
            };
            resp = resp.with_header(header, &value.to_string());
        }
        if forget {
            self.respond_forget(key, resp);
        } else {
            self.respond(key, resp);
        }
    }

    /// The registrar refused the credentials: count the failure (unless only the nonce was
    /// unusable) and challenge again.
    pub(super) fn auth_refused(&mut self, key: &TransactionKey, stale: bool) {
        let source = self
            .servers
            .get(key)
            .and_then(|e| e.auth.as_ref())
            .and_then(|w| w.source);
        if let (false, Some(ip)) = (stale, source) {
            self.env.auth_failed(ip);
        }
        self.challenge(key, stale, false);
    }

    /// The registrar answered [`Output::Authenticate`].
    pub(super) fn on_authenticated(
        &mut self,
        key: TransactionKey,
        result: Result<(), LocateError>,
    ) {
        let Some(entry) = self.servers.get(&key).filter(|e| !e.done) else {
            return;
        };
        let Some(req) = entry.request.clone() else {
            return;
        };
        match result {
            Ok(()) => {
                let from = entry.reply_to.clone();
                if let Some(e) = self.servers.get_mut(&key) {
                    e.request = None;
                }
                self.route(key, req, from, None, None, None);
            }
            Err(LocateError::Unauthorized { stale }) => self.auth_refused(&key, stale),
            Err(LocateError::Rejected { status, reason, .. }) => {
                self.respond_status(&key, status, &reason)
            }
            Err(LocateError::Unavailable(_)) => self.respond_unavailable(&key),
        }
    }

    /// Whether the request is for us: no Route left once ours are taken off, and a
    /// Request-URI in one of our domains, naming this node, or a `tel:` number (routed by
    /// the number registry, never to a place the caller chooses).
    fn targets_us(&self, req: &Request) -> bool {
        let foreign_route = req
            .headers
            .routes()
            .filter_map(|r| Uri::parse(r.uri_str()).ok())
            .any(|u| !self.local.is_local_uri(&u));
        !foreign_route
            && (self.local.is_our_domain(&req.uri)
                || self.local.is_local_uri(&req.uri)
                || crate::numbers::is_tel(&req.uri))
    }

    /// Whether the top Route is ours and carries our signature of the request's Call-ID.
    fn signed_route(&self, req: &Request) -> bool {
        let (Some(keys), Some(call_id)) = (self.keys.as_ref(), req.headers.call_id()) else {
            return false;
        };
        let Some(top) = req.headers.routes().next() else {
            return false;
        };
        let Ok(uri) = Uri::parse(top.uri_str()) else {
            return false;
        };
        self.local.is_local_uri(&uri)
            && uri
                .param(ROUTE_TAG)
                .is_some_and(|tag| keys.check_route_tag(call_id, tag))
    }

    /// Takes our realm's credentials off a request going on (RFC 3261 22.3: they were
    /// meant for us).
    fn strip_credentials(&self, req: &mut Request, realm: &str) {
        let values: Vec<String> = req
            .headers
            .all("Proxy-Authorization")
            .map(|h| h.value().to_owned())
            .collect();
        if values.is_empty() {
            return;
        }
        req.headers.remove_all("Proxy-Authorization");
        for v in values {
            let ours = crate::digest::credentials_for_realm([v.as_str()], realm).is_some();
            if !ours {
                req.headers.push("Proxy-Authorization", &v);
            }
        }
    }
}

/// `(user, domain, canonical AOR)` of a From or To: the user part as is (case-sensitive),
/// the host in lower case; `None` without a user.
fn aor_of(na: &NameAddr<'_>) -> Option<(String, String, String)> {
    let uri = Uri::parse(na.uri_str()).ok()?;
    if !uri.is_sip() {
        return None;
    }
    Some((
        uri.user()?.to_string(),
        uri.host().to_ascii_lowercase(),
        uri.canonical_aor()?,
    ))
}
