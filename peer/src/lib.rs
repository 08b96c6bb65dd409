//! `peer`: the messenger's command line, its agent and its full-screen app. `peer up` runs the agent; every
//! other command after login talks to that agent over its local control channel; `peer` alone on a terminal
//! opens the app.
//!
//! A library as well as a binary so that the app's state and rendering can be driven in-process (`bench
//! tui`) and each component tested without spawning processes.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod agent;
pub mod app;
mod broker;
mod chat;
mod cli;
mod control;
mod core;
mod db;
mod direct;
mod files;
mod groups;
mod history;
mod home;
mod inbound;
mod link;
mod mailbox;
mod net;
mod output;
mod password;
mod reads;
mod relay;
mod searches;
mod spawn;
mod tasks;
mod transfers;
mod trust;
mod views;

use clap::Parser;

/// The `peer` program.
pub fn main() {
    let args = cli::Cli::parse();
    // The app owns the screen: a log line would tear it, so it logs nothing (the agent keeps its own log).
    let filter = if args.is_app() {
        tracing_subscriber::EnvFilter::new("off")
    } else {
        tracing_subscriber::EnvFilter::try_from_env("PEER_LOG")
            .unwrap_or_else(|_| if matches!(args.cmd, Some(cli::Cmd::Up { .. })) { "info" } else { "warn" }.into())
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            output::note!("peer: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(cli::run(args)) {
        if cli::Cli::wants_json() {
            output::json_line_to(&mut std::io::stdout(), &cli::error_json(&e).to_string());
        }
        output::raw_line_to(&mut std::io::stderr(), &format!("peer: {}", output::error_text(&format!("{e:#}"))));
        std::process::exit(1);
    }
}
