//! Integration tests: the real `tinyinetd` binary, started on loopback with
//! free ports, talked to over TCP. One test binary, one module per area.

mod harness;

mod admission;
mod control;
mod core;
mod daytime;
mod examples;
mod faults;
mod flat;
mod hardening;
mod import;
mod include;
mod interpreter;
mod logformat;
mod logsink;
mod lookups;
mod platform;
mod proxy;
mod reload;
mod security;
mod sockopt;
mod starting;
mod stderr;
mod stress;
mod structure;
mod sum;
mod supervision;
mod unix;
mod wait;
