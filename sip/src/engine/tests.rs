//! Tests of the engine, with no sockets: messages in at a chosen time, outputs checked.
