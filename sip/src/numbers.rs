//! Telephone numbers in Request-URIs and user parts, read into their E.164 form (`+15550100`),
//! the key the farm's number registry holds them under.
//!
//! - `tel:` URIs (RFC 3966): a global number (`tel:+1-555-0100`), visual separators (`-`, `.`,
//!   `(`, `)`) ignored; a local number with a `phone-context` that is a global number prefix
//!   (`tel:5550100;phone-context=+1`) or one of the farm's domains with a dial plan
//!   (`tel:5550100;phone-context=example.test`). Other parameters (`ext`, `isub`) are ignored.
//! - `sip:` and `sips:` URIs of a domain the farm serves: a user part that is an E.164 number
//!   (`sip:+15550100@example.test`, with or without `;user=phone`), or a number in the
//!   domain's local form as its dial plan reads it (`sip:5550100@example.test` with a NANP
//!   plan). User parameters (`;isub=`, `;postd=`) are ignored.
//!
//! Everything here is a pure function of the text and the dial plans.

use onehop_overlay::provision::DialPlan;

use crate::params::Params;
use crate::Uri;

/// The dial plans of the domains that configure one (domain in lower case, plan).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialPlans {
    plans: Vec<(String, DialPlan)>,
}

impl DialPlans {
    /// The plans of `plans` (`(domain, plan)`; domains compare case-insensitively).
    pub fn new(plans: &[(String, DialPlan)]) -> DialPlans {
        DialPlans {
            plans: plans
                .iter()
                .map(|(d, p)| (d.to_ascii_lowercase(), p.clone()))
                .collect(),
        }
    }

    /// The plan of `domain`, if it has one.
    pub fn get(&self, domain: &str) -> Option<&DialPlan> {
        self.plans
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, p)| p)
    }

    /// The E.164 form of the user part `user` of a URI of `domain` (one the farm serves): an
    /// E.164 number as written, or a local form the domain's plan reads; `None` when it is
    /// not a number (an account name, say).
    pub fn user_number(&self, user: &str, domain: &str) -> Option<String> {
        // User parameters (RFC 3261 19.1.1 telephone-subscriber: `;isub=`, `;postd=`) are not
        // part of the number.
        let number = user.split(';').next().unwrap_or_default();
        match self.get(domain) {
            Some(plan) => plan.to_e164(number),
            // No plan: only the global form.
            None if number.starts_with('+') => DialPlan::default().to_e164(number),
            None => None,
        }
    }

    /// The E.164 number a `tel:` URI names, or `None` when it is not a `tel:` URI or not a
    /// number that can be placed (a local number without a usable `phone-context`).
    pub fn tel_number(&self, uri: &Uri) -> Option<String> {
        if !uri.scheme().eq_ignore_ascii_case("tel") {
            return None;
        }
        let rest = &uri.as_str()[uri.scheme().len() + 1..];
        let (number, params) = match rest.find(';') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if number.starts_with('+') {
            return DialPlan::default().to_e164(number);
        }
        let context = Params::new(params).get("phone-context")?;
        if context.starts_with('+') {
            // A global number prefix: the local number follows its digits (RFC 3966 5.1.5).
            let prefix = DialPlan::default().to_e164(context)?;
            let local: String = number
                .chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')'))
                .collect();
            if local.is_empty() || !local.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            return DialPlan::default().to_e164(&format!("{prefix}{local}"));
        }
        let plan = self.get(context)?;
        if number.starts_with('+') {
            return None;
        }
        plan.to_e164(number)
    }

    /// The E.164 number of a Request-URI: a `tel:` URI ([`Self::tel_number`]), or a `sip:` or
    /// `sips:` URI whose host is one of `domains` with a user part that is a number
    /// ([`Self::user_number`]).
    pub fn uri_number(&self, uri: &Uri, domains: &[String]) -> Option<String> {
        if uri.is_sip() {
            let host = uri.host();
            if !domains.iter().any(|d| d.eq_ignore_ascii_case(host)) {
                return None;
            }
            return self.user_number(uri.user()?, host);
        }
        self.tel_number(uri)
    }
}

/// Whether `uri` is a `tel:` URI.
pub fn is_tel(uri: &Uri) -> bool {
    uri.scheme().eq_ignore_ascii_case("tel")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plans() -> DialPlans {
        DialPlans::new(&[
            (
                "Example.TEST".into(),
                DialPlan {
                    country_code: "1".into(),
                    national_prefix: String::new(),
                    international_prefix: "011".into(),
                },
            ),
            (
                "de.test".into(),
                DialPlan {
                    country_code: "49".into(),
                    national_prefix: "0".into(),
                    international_prefix: "00".into(),
                },
            ),
        ])
    }

    fn domains() -> Vec<String> {
        ["example.test", "de.test", "plain.test"]
            .iter()
            .map(|d| d.to_string())
            .collect()
    }

    fn number(uri: &str) -> Option<String> {
        plans().uri_number(&Uri::parse(uri).unwrap(), &domains())
    }

    #[test]
    fn tel_uris_name_global_numbers_with_separators_ignored() {
        assert_eq!(number("tel:+15550100").as_deref(), Some("+15550100"));
        assert_eq!(number("TEL:+1-555-0100").as_deref(), Some("+15550100"));
        assert_eq!(number("tel:+1.(555).0100").as_deref(), Some("+15550100"));
        assert_eq!(
            number("tel:+1-555-0100;ext=12").as_deref(),
            Some("+15550100")
        );
        // Not numbers: letters, a leading 0 country code, too long, nothing.
        for bad in [
            "tel:+1555abc",
            "tel:+0123",
            "tel:+1234567890123456",
            "tel:+",
            "tel:",
        ] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }

    #[test]
    fn local_tel_numbers_need_a_context_we_can_read() {
        assert_eq!(
            number("tel:555-0100;phone-context=+1").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            number("tel:030-123456;phone-context=de.test").as_deref(),
            Some("+4930123456")
        );
        assert_eq!(
            number("tel:5550100;phone-context=example.test").as_deref(),
            Some("+15550100")
        );
        // No context, a domain without a plan, a bad prefix: not placeable.
        assert_eq!(number("tel:5550100"), None);
        assert_eq!(number("tel:5550100;phone-context=plain.test"), None);
        assert_eq!(number("tel:5550100;phone-context=elsewhere.test"), None);
        assert_eq!(number("tel:5550100;phone-context=+0"), None);
        assert_eq!(number("tel:55x0100;phone-context=+1"), None);
    }

    #[test]
    fn sip_user_parts_are_numbers_in_our_domains_only() {
        assert_eq!(
            number("sip:+15550100@example.test").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            number("sips:+1-555-0100@EXAMPLE.test;user=phone").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            number("sip:+15550100;isub=7@plain.test").as_deref(),
            Some("+15550100"),
            "the global form needs no plan; user parameters are not the number"
        );
        // Local forms, by the domain's plan.
        assert_eq!(
            number("sip:5550100@example.test").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            number("sip:01149301234@example.test").as_deref(),
            Some("+49301234")
        );
        assert_eq!(
            number("sip:030123456@de.test").as_deref(),
            Some("+4930123456")
        );
        assert_eq!(number("sip:30123456@de.test"), None, "no trunk prefix");
        assert_eq!(number("sip:5550100@plain.test"), None, "no plan");
        // Not numbers, or not ours.
        assert_eq!(number("sip:alice@example.test"), None);
        assert_eq!(number("sip:+alice@example.test"), None);
        assert_eq!(number("sip:example.test"), None);
        assert_eq!(number("sip:+15550100@elsewhere.test"), None);
        assert_eq!(number("mailto:+15550100@example.test"), None);
    }
}
