//! Node-to-node requests over QUIC with mutual TLS.
