//! The replicated store on the ring (put / get / remove / put-or-get with expiry).
