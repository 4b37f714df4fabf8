//! Requests routed by a telephone number, and an account's own number used as its alias.
//!
//! - A request whose Request-URI names a number ([`crate::numbers`]: `tel:+15550100`,
//!   `sip:+15550100@D` for a domain D of ours, or D's local form) is routed by where the
//!   number registry routes it ([`Output::RouteNumber`]): to an account, the account's
//!   bindings (480 when it has none); to a URI, the request goes there (its Request-URI
//!   rewritten, another domain located by RFC 3263, a URI of our own domains looked up as an
//!   AOR, with no second number step); not routed, 404 `Number Not Routed`. A `sip:` or
//!   `sips:` URI whose number is not routed is then looked up as the AOR it is (an alias
//!   written as a number keeps working), 404 `Number Not Routed` when that has no binding
//!   either.
//! - A REGISTER whose To is a number of ours, authenticated as another user of the same
//!   domain, binds that user's account when the number is routed to it; a request whose
//!   From is such a number is authenticated against the account when the number is routed
//!   to it (caller ID). Otherwise both are refused as a user the credentials may not speak
//!   for (403 `Authentication ID Does Not Match`, as for any other AOR).

use std::net::SocketAddr;

use super::{AuthCheck, Engine, Env, LocateError, MediaHook, NumberRoute, Output};
use crate::transaction::TransactionKey;
use crate::{Request, Uri};

/// The reason phrase of the 404 for a number that is not routed (or not a number we know).
pub(super) const NOT_ROUTED: &str = "Number Not Routed";

/// The reason phrase of the 403 for credentials of a user who may not use the AOR (or the
/// number) of a To or From.
pub(super) const NOT_YOURS: &str = "Authentication ID Does Not Match";

/// What a request waits for a number's routing for.
#[derive(Debug, Clone)]
pub(super) enum NumberWait {
    /// The Request-URI is this number: the request goes where it is routed.
    Route {
        /// `+15550100`.
        number: String,
    },
    /// A REGISTER to the number, authenticated as `account`: the account is bound when the
    /// number is routed to it.
    Register {
        /// `+15550100`.
        number: String,
        /// `user@domain` of the credentials.
        account: String,
        /// The credentials, for the account's registrar.
        check: Box<AuthCheck>,
        /// Where the REGISTER came from (the binding's `received`).
        source: Option<SocketAddr>,
    },
    /// A request from the number, authenticated as `account`: the credentials are checked
    /// at the account when the number is routed to it.
    From {
        /// `+15550100`.
        number: String,
        /// `user@domain` of the credentials.
        account: String,
        /// The credentials, for the account's registrar.
        check: Box<AuthCheck>,
    },
}

impl NumberWait {
    fn number(&self) -> &str {
        match self {
            NumberWait::Route { number }
            | NumberWait::Register { number, .. }
            | NumberWait::From { number, .. } => number,
        }
    }
}

impl<E: Env, M: MediaHook> Engine<E, M> {
    /// Routes `req` (waiting in `key`) by where `number`, which its Request-URI names, is
    /// routed.
    pub(super) fn start_number_route(&mut self, key: TransactionKey, req: Request, number: String) {
        self.start_number_check(&key, req, NumberWait::Route { number });
    }

    /// Asks where the number of `wait` is routed, `req` waiting in `key` until the answer.
    pub(super) fn start_number_check(
        &mut self,
        key: &TransactionKey,
        req: Request,
        wait: NumberWait,
    ) {
        if !self.may_wait(key) {
            return;
        }
        let number = wait.number().to_string();
        let Some(entry) = self.servers.get_mut(key) else {
            return;
        };
        entry.request = Some(req);
        entry.number = Some(wait);
        self.pending += 1;
        self.out.push_back(Output::RouteNumber {
            key: key.clone(),
            number,
        });
    }

    /// The number registry answered [`Output::RouteNumber`].
    pub(super) fn on_number_routed(
        &mut self,
        key: TransactionKey,
        result: Result<Option<NumberRoute>, LocateError>,
    ) {
        let Some(entry) = self.servers.get_mut(&key).filter(|e| !e.done) else {
            return;
        };
        let (Some(wait), Some(mut req)) = (entry.number.take(), entry.request.clone()) else {
            return;
        };
        let route = match result {
            Ok(route) => route,
            Err(e) => {
                self.respond_error(&key, &req, e);
                return;
            }
        };
        match wait {
            NumberWait::Route { .. } => match route {
                Some(NumberRoute::Account(aor)) => {
                    // Like an alias: the account's bindings; none is "not reachable now".
                    if let Some(e) = self.servers.get_mut(&key) {
                        e.empty_lookup = Some((480, "Temporarily Unavailable"));
                    }
                    self.lookup_aor(key, req, aor);
                }
                Some(NumberRoute::Uri(uri)) => match Uri::parse(&uri) {
                    Ok(uri) if uri.is_sip() => {
                        req.uri = uri;
                        let ours =
                            self.local.is_our_domain(&req.uri) || self.local.is_local_uri(&req.uri);
                        if ours {
                            self.start_lookup(key, req);
                        } else {
                            self.route_onward(key, req);
                        }
                    }
                    // The registry holds only SIP URIs; anything else is no route.
                    _ => self.respond_status(&key, 404, NOT_ROUTED),
                },
                None if req.uri.is_sip() => {
                    // Perhaps an AOR written as a number (an alias, an account).
                    if let Some(e) = self.servers.get_mut(&key) {
                        e.empty_lookup = Some((404, NOT_ROUTED));
                    }
                    self.start_lookup(key, req);
                }
                None => self.respond_status(&key, 404, NOT_ROUTED),
            },
            NumberWait::Register {
                account,
                check,
                source,
                ..
            } => {
                if !routed_to(&route, &account) {
                    // Refused before the password was checked: no state kept (as the
                    // other refusals of the checks before authentication).
                    self.respond_status_forget(&key, 403, NOT_YOURS);
                    return;
                }
                let from = self.servers.get(&key).map(|e| e.reply_to.clone());
                let Some(from) = from else {
                    return;
                };
                crate::proxy::preprocess_route(&mut req, &self.local);
                self.start_register(key, req, &from, source, Some(check), Some(account));
            }
            NumberWait::From { account, check, .. } => {
                if !routed_to(&route, &account) {
                    // Refused before the password was checked: no state kept (as the
                    // other refusals of the checks before authentication).
                    self.respond_status_forget(&key, 403, NOT_YOURS);
                    return;
                }
                self.start_authenticate(&key, req, account, check);
            }
        }
    }
}

/// Whether `route` is the account `aor` (`user@domain`: the user compared as is, the domain
/// in any case).
fn routed_to(route: &Option<NumberRoute>, aor: &str) -> bool {
    let Some(NumberRoute::Account(a)) = route else {
        return false;
    };
    match (a.rsplit_once('@'), aor.rsplit_once('@')) {
        (Some((u1, d1)), Some((u2, d2))) => u1 == u2 && d1.eq_ignore_ascii_case(d2),
        _ => false,
    }
}
