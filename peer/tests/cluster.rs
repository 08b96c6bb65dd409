//! Brokers in a cluster (`--cluster` over NATS, one PostgreSQL or MariaDB database, one identity): users
//! served by different nodes find each other, befriend, see each other's presence, chat directly, and share
//! a group with one order; when a node dies its users' agents move to another node within seconds and
//! carry on.
#![allow(clippy::disallowed_macros)] // test output, read by people debugging a test

use testkit::{Backend, Broker, Nats, Peer, backends, texts, wait_until};

/// A user registered at node `first` whose agent knows every node, from that one on, to fail over to.
fn user_on(nodes: &[Broker], first: usize, name: &str) -> Peer {
    let mut p = Peer::new(&nodes[first]);
    p.broker = (0..nodes.len()).map(|i| nodes[(first + i) % nodes.len()].address()).collect::<Vec<_>>().join(",");
    p.register(name, name);
    p
}

#[test]
fn users_on_different_nodes_talk_as_on_one_broker() {
    let shared: Vec<Backend> = backends().into_iter().filter(|b| b.name() != "sqlite").collect();
    assert!(!shared.is_empty(), "needs PostgreSQL or MariaDB (TEST_POSTGRES_URL / TEST_MYSQL_URL)");
    for backend in shared {
        eprintln!("backend: {}", backend.name());
        cluster(&backend);
    }
}

fn cluster(backend: &Backend) {
    let mut nodes = Broker::start_cluster(backend, 3);
    // Each user's agent starts on a node of its own and knows the others to fail over to.
    let peer = |name: &str, first: usize| user_on(&nodes, first, name);
    let (alice, bob, carol) = (peer("alice", 0), peer("bob", 1), peer("carol", 2));
    let _a = alice.up();
    let _b = bob.up();
    let _c = carol.up();
    let bob_watch = bob.watch();
    // The request goes from node 0 to bob on node 1; his accept comes back.
    alice.befriend(&bob);
    alice.befriend(&carol);
    wait_until("bob sees alice online (she is on another node)", || {
        bob.json(&["friends", "--json"])[0]["online"] == true
    });
    assert!(alice.ok(&["send", "bob", "across nodes"]).contains("delivered"), "{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["across nodes", "and back"]);

    // A group with a member on each node: everyone's log has one order.
    let group = alice.ok(&["groups", "create", "g"]).split_whitespace().find_map(|w| w.parse::<i64>().ok()).unwrap();
    let g = group.to_string();
    for (who, p) in [("bob", &bob), ("carol", &carol)] {
        alice.ok(&["groups", "invite", &g, who]);
        p.ok(&["groups", "join", &g]);
    }
    std::thread::scope(|s| {
        for (p, name) in [(&alice, "a"), (&bob, "b"), (&carol, "c")] {
            let g = g.clone();
            s.spawn(move || {
                for i in 0..5 {
                    p.ok(&["send", "--group", &g, &format!("{name}{i}")]);
                }
            });
        }
    });
    let said = |p: &Peer| -> Vec<String> {
        texts(&p.json(&["history", "--group", &g, "--json", "--limit", "100"]))
            .into_iter()
            .filter(|t| t.len() == 2)
            .collect()
    };
    wait_until("every member has all fifteen", || [&alice, &bob, &carol].iter().all(|p| said(p).len() == 15));
    assert_eq!(said(&alice), said(&bob), "one order");
    assert_eq!(said(&bob), said(&carol), "one order");

    // Node 0 dies: alice's agent notices within seconds and moves to another node (session ids carry the
    // node's id in their high bits; node 0's is 1), usually before the other nodes have noticed the death,
    // so bob may never see her offline; chat carries on.
    drop(bob_watch);
    nodes[0].kill();
    wait_until("alice's agent is on another node", || {
        let s = alice.json(&["status", "--json"]);
        s["online"] == true && s["session_id"].as_u64().is_some_and(|id| id >> 32 != 1)
    });
    wait_until("bob sees alice online", || bob.json(&["friends", "--json"])[0]["online"] == true);
    assert!(alice.ok(&["send", "bob", "after the node died"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["across nodes", "and back", "after the node died"]);
}

/// NATS restarts under a two-node cluster: the nodes reconnect and resynchronise (a user who came online
/// while NATS was away is found), and chat across the nodes carries on.
#[test]
fn the_cluster_survives_a_nats_restart() {
    let backend = backends().into_iter().find(|b| b.name() == "postgres").expect("needs TEST_POSTGRES_URL");
    let mut nats = Nats::start();
    let nodes = Broker::start_cluster_on(&backend, 2, &nats.url());
    let peer = |name: &str, first: usize| user_on(&nodes, first, name);
    let (alice, bob, carol) = (peer("alice", 0), peer("bob", 1), peer("carol", 1));
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "before"]).contains("delivered"));

    let reconnected = || nodes[0].log().matches("connected to NATS again").count();
    let before = reconnected();
    nats.restart();
    wait_until("node 0 is back on NATS", || reconnected() > before);
    // Carol comes online on node 1 while node 0 may not have heard yet; she befriends alice on node 0.
    let _c = carol.up();
    alice.befriend(&carol);
    wait_until("alice sees carol online across the nodes", || {
        alice
            .json(&["friends", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["username"] == "carol" && f["online"] == true)
    });
    assert!(alice.ok(&["send", "carol", "after the restart"]).contains("delivered"), "{}", alice.agent_log());
    assert!(alice.ok(&["send", "bob", "after"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["before", "after"]);
}

/// Two agents that can only be relayed (`--relay-only`), served by different nodes: the relay goes
/// through both nodes (the requester's checks the friendship, the friend's opens the friend's side), its
/// datagrams too, and chat and a file get through end to end, as on one broker.
#[test]
fn agents_on_different_nodes_are_relayed_through_both() {
    let backend = backends().into_iter().find(|b| b.name() != "sqlite").expect("needs PostgreSQL or MariaDB");
    let nodes = Broker::start_cluster(&backend, 2);
    let alice = Peer::registered(&nodes[0], "alice");
    let bob = Peer::registered(&nodes[1], "bob");
    let inbox = tempfile::tempdir().unwrap();
    let _a = alice.up_with(&["--relay-only"]);
    let _b = bob.up_with(&["--relay-only", "--auto-accept-files", inbox.path().to_str().unwrap()]);
    alice.befriend(&bob);
    wait_until("alice sees bob online (he is on the other node)", || {
        alice.json(&["friends", "--json"])[0]["online"] == true
    });

    let out = alice.ok(&["send", "bob", "relayed across nodes"]);
    assert!(out.contains("delivered"), "{out}\nalice's log:\n{}\nnode 0:\n{}", alice.agent_log(), nodes[0].log());
    assert!(bob.ok(&["send", "alice", "and back"]).contains("delivered"));
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["relayed across nodes", "and back"]);
    let conn = alice.json(&["friends", "--json"])[0]["connections"][0].clone();
    assert_eq!(conn["path"], "relayed", "{conn}");
    assert_eq!(conn["remote_addr"], nodes[0].address().as_str(), "alice's packets go to her own node");

    let src = tempfile::tempdir().unwrap();
    let file = src.path().join("across-nodes.bin");
    let data: Vec<u8> = (0..2_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    std::fs::write(&file, &data).unwrap();
    let out = alice.ok(&["send-file", "bob", file.to_str().unwrap()]);
    assert!(out.contains("verified"), "{out}");
    assert_eq!(std::fs::read(inbox.path().join("across-nodes.bin")).unwrap(), data);
    for node in &nodes {
        let log = node.log();
        assert!(log.contains("relay open"), "every node on the path relayed:\n{log}");
        // The channel across the nodes (agent, node, node, agent) carried the packets, both ways: on each
        // node, from its agent and from the other node.
        assert_eq!(log.matches("relay channel in use").count(), 2, "{log}");
    }
}

/// A device linked through another node than the one its account's existing device is on: the code is
/// offered on node 0 and claimed on node 1 (the node that holds it answers over NATS), and the new device
/// gets the history and then messages; a made-up code is still refused.
#[test]
fn a_device_links_through_another_node() {
    let backend = backends().into_iter().find(|b| b.name() != "sqlite").expect("needs PostgreSQL or MariaDB");
    let nodes = Broker::start_cluster(&backend, 2);
    let alice = Peer::registered(&nodes[0], "alice");
    let bob = Peer::registered(&nodes[0], "bob");
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "before the link"]).contains("delivered"));

    let mut laptop = Peer::new(&nodes[1]);
    let out = laptop.link_from(&bob);
    assert!(out.contains("linked"), "{out}\nnode 1:\n{}", nodes[1].log());
    assert_eq!(texts(&laptop.json(&["history", "alice", "--json"])), ["before the link"]);
    let _l = laptop.up();
    let watch = laptop.watch();
    assert!(alice.ok(&["send", "bob", "after the link"]).contains("delivered"));
    watch.expect_event("message_received", "alice");

    let phone = Peer::new(&nodes[1]);
    let out = phone.run(&["link", "0000-0000-0000-0000", "--broker", &nodes[1].address()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such link code"), "{out:?}");
}

/// A partition between one node and NATS (a cut TCP link; the node still has its agents and the
/// database): after the idle timeout the other nodes have taken its sessions out, and the node, seeing in
/// the database that they still hear NATS, sends its users to them and takes no session until NATS is
/// back; its users carry on from another node, and once healed it serves again.
#[test]
fn a_node_cut_off_from_nats_sends_its_users_to_the_others() {
    partition(testkit::TcpCut::cut);
}

/// The same partition when the link goes silent instead (packets dropped, nobody told): the node's NATS
/// client still says "connected" (its pings would notice only minutes later), but its own heartbeats no
/// longer come back, which is what it goes by.
#[test]
fn a_node_whose_link_to_nats_goes_silent_sends_its_users_to_the_others() {
    partition(testkit::TcpCut::silence);
}

fn partition(break_link: fn(&testkit::TcpCut)) {
    let backend = backends().into_iter().find(|b| b.name() == "postgres").expect("needs TEST_POSTGRES_URL");
    let nats = testkit::nats_url();
    let port: u16 = nats.rsplit(':').next().unwrap().parse().unwrap();
    let cut = testkit::TcpCut::to(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let nodes = Broker::start_cluster_via(&backend, &[nats.clone(), format!("nats://{}", cut.addr())]);
    let peer = |name: &str, first: usize| user_on(&nodes, first, name);
    let users = [peer("alice", 0), peer("bob", 1), peer("carol", 1)];
    partitioned(&nodes, users, || break_link(&cut), || cut.heal());
}

/// The same partition in the NAT lab, where packets really are lost: each node on a host of its own
/// (a1, a2), NATS on a third (`broker`), the database reached from inside the lab through a forwarder,
/// and the users behind NATs (b1, b2, d1). Every packet between node 2's host and NATS's is dropped, both
/// ways (nftables on node 2's host); node 2 still reaches its agents and the database.
#[test]
fn a_node_partitioned_from_nats_in_the_lab_sends_its_users_to_the_others() {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let backend = backends().into_iter().find(|b| b.name() == "postgres").expect("needs TEST_POSTGRES_URL");
    let lab = testkit::Lab::build();
    let nats_ip = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
    let _nats = lab.spawn("broker", &["nats-server", "-a", "203.0.113.1", "-p", "4222"]);
    let listens = || lab.succeeds("broker", &["bash", "-c", "exec 3<>/dev/tcp/203.0.113.1/4222"]);
    wait_until("NATS listens in the lab", listens);
    let server = testkit::db::server_of(&std::env::var("TEST_POSTGRES_URL").unwrap());
    let hosts = [("a1", Ipv4Addr::new(203, 0, 113, 10)), ("a2", Ipv4Addr::new(203, 0, 113, 11))];
    let forwarders: Vec<testkit::TcpCut> = hosts
        .iter()
        .map(|&(host, ip)| testkit::TcpCut::from(lab.listen_in(host, SocketAddr::from((ip, 5432))), server))
        .collect();
    let places: Vec<testkit::Node> = hosts
        .iter()
        .zip(&forwarders)
        .map(|(&(host, ip), db)| testkit::Node {
            netns: Some(lab.ns(host)),
            listen: SocketAddr::from((ip, 7878)),
            db: Some(db.addr()),
        })
        .collect();
    let nodes = Broker::start_cluster_in(&backend, &places, "nats://203.0.113.1:4222");
    let peer = |name: &str, first: usize, host: &str| {
        let mut p = Peer::new(&nodes[first]);
        p.netns = Some(lab.ns(host));
        p.broker = [first, 1 - first].map(|i| nodes[i].address()).join(",");
        p.register(name, name);
        p
    };
    let users = [peer("alice", 0, "b1"), peer("bob", 1, "b2"), peer("carol", 1, "d1")];
    partitioned(&nodes, users, || lab.partition("a2", nats_ip), || lab.reconnect("a2"));
}

/// Node 2 loses NATS (`cut`) and gets it back (`heal`): alice starts on node 1, bob and carol on node 2.
fn partitioned(nodes: &[Broker], users: [Peer; 3], cut: impl Fn(), heal: impl Fn()) {
    let [alice, bob, carol] = users;
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "before the cut"]).contains("delivered"));
    let node_of = |p: &Peer| p.json(&["status", "--json"])["session_id"].as_u64().map(|id| id >> 32);
    assert_eq!(node_of(&bob), Some(2));

    cut();
    wait_until("node 2 sends its users away", || nodes[1].log().contains("cut off from NATS while other nodes"));
    wait_until("bob's agent moved to node 1", || node_of(&bob) == Some(1));
    wait_until("alice sees bob online", || alice.json(&["friends", "--json"])[0]["online"] == true);
    assert!(alice.ok(&["send", "bob", "during the cut"]).contains("delivered"), "{}", alice.agent_log());
    assert!(bob.ok(&["send", "alice", "from the other node"]).contains("delivered"));
    assert_eq!(
        texts(&bob.json(&["history", "alice", "--json"])),
        ["before the cut", "during the cut", "from the other node"]
    );
    assert_eq!(nodes[1].log().matches("cut off from NATS while other nodes").count(), 1, "logged once");

    // A broken link reconnects; a silent one may never have dropped, and its echo comes back.
    let back = || {
        let log = nodes[1].log();
        log.matches("connected to NATS again").count() + log.matches("hearing NATS again").count()
    };
    let before = back();
    heal();
    wait_until("node 2 is back on NATS", || back() > before);
    // It takes sessions again: carol, who lists it first, is served by it, and alice finds her.
    let _c = carol.up();
    assert_eq!(node_of(&carol), Some(2));
    alice.befriend(&carol);
    assert!(alice.ok(&["send", "carol", "after the heal"]).contains("delivered"));
}

/// The database goes away under a running cluster (every connection to it broken, new ones refused, as in
/// a restart) and comes back: friends keep chatting meanwhile (that is peer to peer), what needs the
/// database fails with a clear error instead of being reported done, nobody is thrown offline, and once
/// it is back everything works without restarting anything; nothing acknowledged is lost.
#[test]
fn the_cluster_rides_out_a_database_restart() {
    database_outage(testkit::TcpCut::cut);
}

/// The same when the link to the database goes silent instead (packets lost, nobody told, as in a
/// partition): requests that need it are answered "busy" once their deadline passes, not held until TCP
/// gives up, and once the held packets arrive the database holds what was acknowledged and nothing that
/// was refused (read on a session of its own). The store's own test covers the worst case, a `BEGIN`
/// abandoned midway.
#[test]
fn the_cluster_rides_out_a_silent_database_link() {
    database_outage(testkit::TcpCut::silence);
}

fn database_outage(break_link: fn(&testkit::TcpCut)) {
    let backend = backends().into_iter().find(|b| b.name() == "postgres").expect("needs TEST_POSTGRES_URL");
    let server = testkit::db::server_of(&std::env::var("TEST_POSTGRES_URL").unwrap());
    let db = testkit::TcpCut::to(server);
    let nodes = Broker::start_cluster_db_through(&backend, 2, &db);
    let peer = |name: &str, first: usize| user_on(&nodes, first, name);
    let (alice, bob) = (peer("alice", 0), peer("bob", 1));
    let _a = alice.up();
    let _b = bob.up();
    alice.befriend(&bob);
    assert!(alice.ok(&["send", "bob", "before"]).contains("delivered"));
    let group = alice.ok(&["groups", "create", "g"]).split_whitespace().find_map(|w| w.parse::<i64>().ok()).unwrap();
    let g = group.to_string();
    alice.ok(&["groups", "invite", &g, "bob"]);
    bob.ok(&["groups", "join", &g]);
    alice.ok(&["send", "--group", &g, "posted before"]);

    break_link(&db);
    assert!(alice.ok(&["send", "bob", "during"]).contains("delivered"), "{}", alice.agent_log());
    let refused = alice.run(&["send", "--group", &g, "posted during"]);
    let said = format!("{}{}", String::from_utf8_lossy(&refused.stdout), String::from_utf8_lossy(&refused.stderr));
    assert!(!refused.status.success(), "a post the broker could not store is not reported done: {said}");
    assert!(said.contains("try again shortly"), "a clear answer: {said}");
    for p in [&alice, &bob] {
        assert_eq!(p.json(&["status", "--json"])["online"], true, "still online");
    }

    // A post that waits out the end of the outage: not confirmed, tried again with its id, and stored
    // once the database answers, once.
    let said_by = tempfile::NamedTempFile::new().unwrap();
    let mut across = alice
        .command(&["send", "--group", &g, "posted across the heal"])
        .stdout(std::process::Stdio::null())
        .stderr(said_by.reopen().unwrap())
        .spawn()
        .unwrap();
    let said = || std::fs::read_to_string(said_by.path()).unwrap_or_default();
    wait_until("the post was not confirmed and is tried again", || said().contains("trying again"));
    db.heal();
    assert!(across.wait().unwrap().success(), "stored once the database answers: {}", said());

    wait_until("group posts work again", || alice.run(&["send", "--group", &g, "posted after"]).status.success());
    assert!(bob.ok(&["send", "alice", "after"]).contains("delivered"));
    let posts = |p: &Peer| texts(&p.json(&["history", "--group", &g, "--json", "--limit", "100"]));
    wait_until("bob has the post made after", || posts(&bob).iter().any(|t| t == "posted after"));
    let seen: Vec<String> = posts(&bob).into_iter().filter(|t| t.starts_with("posted")).collect();
    assert_eq!(
        seen,
        ["posted before", "posted across the heal", "posted after"],
        "one order, nothing acknowledged lost, nothing unacknowledged, nothing twice"
    );
    assert_eq!(texts(&bob.json(&["history", "alice", "--json"])), ["before", "during", "after"]);
    // Logged once when it went, once when it came back.
    wait_until("node 1 logs the database's return", || nodes[0].log().contains("the database is reachable again"));
    let log = nodes[0].log();
    assert_eq!(log.matches("the database is unreachable").count(), 1, "{log}");
    assert_eq!(log.matches("the database is reachable again").count(), 1, "{log}");
    assert!(!log.contains("request failed"), "no internal errors: {log}");
    // What the database itself holds, read on a session of its own: what was acknowledged, and only that.
    let stored = nodes[0].db.column(&format!("SELECT text FROM group_messages WHERE group_id = {group} ORDER BY seq"));
    let stored: Vec<&String> = stored.iter().filter(|t| t.starts_with("posted")).collect();
    assert_eq!(
        stored,
        ["posted before", "posted across the heal", "posted after"],
        "committed (once), and nothing refused was stored"
    );
}
