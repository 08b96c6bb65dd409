//! `broker`: the command line only. Everything else is in the library.

use broker::accounts::HashCost;
use broker::config_file;
use broker::server::{Broker, Config};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The messenger's rendezvous broker.
///
/// Peers log in here, find their friends' addresses here (friends only), and get group chat from here;
/// direct messages never pass through it, except relayed (end-to-end encrypted) when NAT blocks a direct path. With no arguments it listens on UDP port 7878 of every address, IPv6 and IPv4 (`[::]:7878`; IPv4 alone where the system has no IPv6), and keeps everything (SQLite database, TLS
/// identity) in ./broker-data. Open that UDP port in your firewall.
///
/// Every flag can also be set in a TOML config file (`--config FILE`): one key per flag, with `_` for `-`
/// (`listen = "0.0.0.0:7878"`, `group_retention_days = 30`, `no_relay = true`). A flag on the command line
/// beats its environment variable, which beats the file, which beats the default.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    /// A TOML config file; see above. Unknown keys and bad values stop the start, naming the file and key.
    #[arg(long, env = "BROKER_CONFIG")]
    config: Option<PathBuf>,
    /// UDP address to listen on: `[::]:PORT` is IPv6 and IPv4 together, `0.0.0.0:PORT` IPv4 only. Port 0
    /// picks a free port (printed once ready).
    #[arg(long, env = "BROKER_LISTEN", default_value = "[::]:7878")]
    listen: SocketAddr,
    /// Directory for the broker's TLS identity and (by default) its SQLite database. Created 0700.
    #[arg(long, env = "BROKER_DATA", default_value = "broker-data")]
    data: PathBuf,
    /// The broker's TLS identity: FILE holds the key (0600), FILE with `.crt` for its extension the
    /// certificate; both are made if neither exists. Brokers that serve the same users (on one database)
    /// present the same identity, so that clients pin one fingerprint: copy both files. Default:
    /// DATA/broker.key.
    #[arg(long, env = "BROKER_IDENTITY")]
    identity: Option<PathBuf>,
    /// Database URL: sqlite:PATH, postgres://user@host/db or mysql://user@host/db. Default: sqlite in --data.
    #[arg(long, env = "BROKER_DATABASE")]
    database: Option<String>,
    /// Days a session token stays valid.
    #[arg(long, env = "BROKER_TOKEN_TTL_DAYS", default_value_t = 30)]
    token_ttl_days: u64,
    /// Most concurrent QUIC connections; more are refused.
    #[arg(long, env = "BROKER_MAX_CONNECTIONS", default_value_t = 100_000)]
    max_connections: usize,
    /// Accounts one IP address may create per hour (each costs a password hash).
    #[arg(long, env = "BROKER_REGISTRATIONS_PER_IP_HOUR", default_value_t = 20)]
    registrations_per_ip_hour: u32,
    /// Password attempts from devices and addresses that never logged into the account tried, broker-wide,
    /// per minute: bounds password spraying from many addresses. Known devices are not held back by it.
    #[arg(long, env = "BROKER_LOGIN_STRANGERS_PER_MINUTE", default_value_t = 600)]
    login_strangers_per_minute: u32,
    /// Group messages one user may post per second (across their groups).
    #[arg(long, env = "BROKER_GROUP_POSTS_PER_SECOND", default_value_t = 20)]
    group_posts_per_second: u32,
    /// Messages kept per group; older ones are dropped as new ones arrive.
    #[arg(long, env = "BROKER_GROUP_RETENTION_MESSAGES", default_value_t = 10_000)]
    group_retention_messages: i64,
    /// Days a group message is kept.
    #[arg(long, env = "BROKER_GROUP_RETENTION_DAYS", default_value_t = 90)]
    group_retention_days: u64,
    /// Do not relay friends' traffic when their direct path is blocked (their chats and files then need a
    /// direct path).
    #[arg(long, env = "BROKER_NO_RELAY")]
    no_relay: bool,
    /// Bytes per second one user may relay (e.g. 10M); 0: no limit. Over it, their relays slow down.
    #[arg(long, env = "BROKER_RELAY_USER_RATE", default_value = "10M", value_parser = shared::files::parse_size)]
    relay_user_rate: u64,
    /// Bytes per second relayed for everyone together; 0: no limit.
    #[arg(long, env = "BROKER_RELAY_TOTAL_RATE", default_value = "100M", value_parser = shared::files::parse_size)]
    relay_total_rate: u64,
    /// Join a cluster of brokers: the NATS server they share (e.g. nats://10.0.0.5:4222). Every node needs
    /// the same --database (PostgreSQL or MySQL/MariaDB) and the same --identity.
    #[arg(long, env = "BROKER_CLUSTER")]
    cluster: Option<String>,
    /// This node's id in the cluster (a number unique among the nodes; random if not given).
    #[arg(long, env = "BROKER_NODE_ID")]
    node_id: Option<u32>,
    /// The address the other nodes of the cluster reach this one at (HOST:PORT of its --listen socket), for
    /// relaying between agents on different nodes. Default: the --listen address, unless that is every
    /// interface (0.0.0.0 or [::]), which other nodes cannot dial.
    #[arg(long, env = "BROKER_CLUSTER_ADDR")]
    cluster_addr: Option<SocketAddr>,
    /// Keep no mailbox: letters for offline devices are refused, and senders keep their messages until
    /// both sides are online (a pure rendezvous).
    #[arg(long, env = "BROKER_NO_MAILBOX")]
    no_mailbox: bool,
    /// Days a sealed letter waits for its device before it is deleted unread.
    #[arg(long, env = "BROKER_MAILBOX_RETENTION_DAYS", default_value_t = 30)]
    mailbox_retention_days: u64,
    /// Letters that may wait for one device.
    #[arg(long, env = "BROKER_MAILBOX_LETTERS_PER_DEVICE", default_value_t = 10_000)]
    mailbox_letters_per_device: i64,
    /// Bytes of letters that may wait for one device (e.g. 64M).
    #[arg(long, env = "BROKER_MAILBOX_BYTES_PER_DEVICE", default_value = "64M", value_parser = shared::files::parse_size)]
    mailbox_bytes_per_device: u64,
    /// Letters one user may deposit per minute (each letter carries up to 24 KiB of messages).
    #[arg(long, env = "BROKER_MAILBOX_DEPOSITS_PER_MINUTE", default_value_t = 600)]
    mailbox_deposits_per_minute: u32,
    /// Argon2id memory per password hash, in KiB (OWASP: 19456). Lower only for tests.
    #[arg(long, env = "BROKER_ARGON2_MEMORY_KIB", default_value_t = 19 * 1024)]
    argon2_memory_kib: u32,
    /// Argon2id iterations (OWASP: 2).
    #[arg(long, env = "BROKER_ARGON2_ITERATIONS", default_value_t = 2)]
    argon2_iterations: u32,
}

/// A random node id (1 to 2^20), for a node started without `--node-id`.
fn random_node_id() -> u32 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    (u32::from_le_bytes(b) % 0xF_FFFF) + 1
}

fn main() {
    cap_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("broker: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run()) {
        // The message, not a debug dump: it says what is wrong and where (file, key, flag).
        eprintln!("broker: {e:#}");
        std::process::exit(1);
    }
}

/// glibc gives each thread that meets contention an allocator arena of its own, up to 8 per core, and
/// memory freed in one arena is not reused by another: with the runtime's workers and the database's
/// threads all allocating, a broker holding 10,000 idle sessions sat ~70 MB (7 KiB a session) higher than
/// with two arenas, for no measurable speed (`bench broker`, BENCHMARKS.md). Set before any thread starts;
/// `MALLOC_ARENA_MAX` in the environment still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn cap_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and changes a glibc setting; no Rust memory is involved, and no
        // other thread exists yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("BROKER_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal: a log file or pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = parse_args()?;
    let database_url = match args.database {
        Some(url) => url,
        None => format!("sqlite:{}?mode=rwc", args.data.join("broker.db").display()),
    };
    let cfg = Config {
        listen: args.listen,
        data_dir: args.data,
        identity: args.identity,
        database_url,
        hash_cost: HashCost { memory_kib: args.argon2_memory_kib, iterations: args.argon2_iterations },
        token_ttl: Duration::from_secs(args.token_ttl_days * 86_400),
        max_connections: args.max_connections,
        registrations_per_hour: args.registrations_per_ip_hour,
        login_strangers_per_minute: args.login_strangers_per_minute,
        group_posts_per_second: args.group_posts_per_second,
        group_retention: broker::groups::Retention {
            max_messages: args.group_retention_messages.max(1),
            max_age: Duration::from_secs(args.group_retention_days * 86_400),
        },
        relay: broker::relay::RelayConfig {
            enabled: !args.no_relay,
            user_rate: args.relay_user_rate,
            total_rate: args.relay_total_rate,
        },
        cluster: args.cluster.map(|url| broker::cluster::ClusterConfig {
            url,
            node: u64::from(args.node_id.unwrap_or_else(random_node_id)),
            advertise: args.cluster_addr,
        }),
        mailbox: broker::mailbox::MailboxConfig {
            enabled: !args.no_mailbox,
            retention: Duration::from_secs(args.mailbox_retention_days * 86_400),
            max_letters: args.mailbox_letters_per_device.max(1),
            max_bytes: i64::try_from(args.mailbox_bytes_per_device).unwrap_or(i64::MAX),
            deposits_per_minute: args.mailbox_deposits_per_minute,
        },
    };
    let broker = Broker::bind(&cfg).await?;
    let addr = broker.local_addr()?;
    // Scripts and tests wait for this exact line.
    println!("broker listening on {addr} fingerprint {}", broker.fingerprint);
    tracing::info!(%addr, fingerprint = %broker.fingerprint, data = %cfg.data_dir.display(), "ready");
    broker.run(shared::io::shutdown_signal()).await;
    Ok(())
}

/// The flags, with the config file's keys filled in where neither the command line nor the environment set
/// them (so the precedence is: command line, environment, file, default).
fn parse_args() -> anyhow::Result<Args> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    let command = Args::command().args_override_self(true);
    let first = command.clone().get_matches();
    let Some(path) = first.get_one::<PathBuf>("config").cloned() else {
        return Ok(Args::from_arg_matches(&first)?);
    };
    let known: Vec<config_file::Known> = command
        .get_arguments()
        .filter(|a| a.get_id() != "config")
        .filter_map(|a| {
            let long = a.get_long()?;
            let kind = if matches!(a.get_action(), clap::ArgAction::SetTrue) {
                config_file::Kind::Switch
            } else {
                config_file::Kind::Value
            };
            Some(config_file::Known { key: a.get_id().to_string(), long: format!("--{long}"), kind })
        })
        .collect();
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().take(1).collect();
    let mut from_file = Vec::new();
    for setting in config_file::read(&path, &known)? {
        if matches!(first.value_source(&setting.key), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        argv.extend(setting.args);
        from_file.push(setting.key);
    }
    argv.extend(std::env::args_os().skip(1));
    let matches = command.try_get_matches_from(argv).map_err(|e| {
        // A bad value that came from the file is reported against the file and its key.
        let arg = e.get(clap::error::ContextKind::InvalidArg).map(|v| v.to_string()).unwrap_or_default();
        let text = e.to_string();
        let text = text.trim_start_matches("error: ");
        let text = text.split("\n\nFor more information").next().unwrap_or(text).trim_end();
        match from_file.iter().find(|k| arg.starts_with(&format!("--{} ", k.replace('_', "-")))) {
            Some(key) => anyhow::anyhow!("the config file {}: key `{key}`: {text}", path.display()),
            None => anyhow::anyhow!("{text}"),
        }
    })?;
    Ok(Args::from_arg_matches(&matches)?)
}
