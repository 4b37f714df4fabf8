//! SIP: messages, transactions, the registrar's binding rules and the proxy core.
