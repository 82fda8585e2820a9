//! A three-node RabbitMQ cluster (`scripts/cluster-up`, beside the system broker) that loses a
//! node twice while logins stream in: first the node a worker is connected to, then the node
//! leading the work queue (and the subscriber's quorum queue), each killed with `kill -9` and
//! started again. Two workers, listing the nodes in different orders, decide throughout, and
//! their events reach the subscriber while the node is down; nothing may be lost or decided
//! twice, and neither worker is restarted.

use std::{path::PathBuf, sync::Mutex};

use futures_lite::StreamExt;

use tokio_util::sync::CancellationToken;

use super::*;

/// The cluster of this test, stopped and removed on drop.
struct Cluster {
    dir: PathBuf,
    nodes: Vec<Node>,
    management: Vec<String>,
}

#[derive(Debug, Clone)]
struct Node {
    name: String,
    port: u16,
    pid: u32,
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// The `node NAME URL pid PID` and `mgmt NAME URL` lines `cluster-up` ends with.
fn parse_nodes(stdout: &str) -> (Vec<Node>, Vec<String>) {
    let mut nodes = Vec::new();
    let mut management = Vec::new();
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["node", name, url, "pid", pid] => {
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, rest)| rest.split('/').next())
                    .and_then(|p| p.parse().ok())
                    .expect("a port in the node's URL");
                nodes.push(Node {
                    name: (*name).to_owned(),
                    port,
                    pid: pid.parse().unwrap(),
                });
            }
            ["mgmt", _, url] => management.push(
                url.replace("guest:guest@", "")
                    .trim_end_matches('/')
                    .to_owned()
                    + "/api",
            ),
            _ => {}
        }
    }
    (nodes, management)
}

impl Cluster {
    fn up(dir: PathBuf) -> Self {
        let output = Command::new(script("cluster-up"))
            .arg(&dir)
            .env("IDSYNC_CLUSTER_MANAGEMENT", "1")
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("scripts/cluster-up runs");
        assert!(output.status.success(), "scripts/cluster-up failed");
        let (nodes, management) = parse_nodes(&String::from_utf8_lossy(&output.stdout));
        assert_eq!(nodes.len(), 3, "three nodes");
        assert_eq!(management.len(), 3, "the management API on each node");
        Self {
            dir,
            nodes,
            management,
        }
    }

    fn url(&self, index: usize, vhost: &str) -> String {
        format!(
            "amqp://guest:guest@127.0.0.1:{}/{vhost}",
            self.nodes[index].port
        )
    }

    fn index_of(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    fn kill(&self, index: usize) {
        run("kill", &["-9", &self.nodes[index].pid.to_string()]);
    }

    /// Starts a killed node again; it rejoins the cluster from its data directory.
    fn restart(&mut self, index: usize) {
        let output = Command::new(script("cluster-up"))
            .args(["--restart-node", &(index + 1).to_string()])
            .arg(&self.dir)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("scripts/cluster-up runs");
        assert!(
            output.status.success(),
            "restarting node {} failed",
            index + 1
        );
        let (nodes, _) = parse_nodes(&String::from_utf8_lossy(&output.stdout));
        self.nodes[index] = nodes.into_iter().next().expect("the node's line");
    }

    /// A management API answer from the first node that gives one.
    async fn get(&self, path: &str) -> Value {
        let http = reqwest::Client::new();
        for api in &self.management {
            let answer = http
                .get(format!("{api}{path}"))
                .basic_auth("guest", Some("guest"))
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
                && let Ok(value) = response.json::<Value>().await
            {
                return value;
            }
        }
        Value::Null
    }

    async fn put(&self, path: &str, body: Value) {
        let response = reqwest::Client::new()
            .put(format!("{}{path}", self.management[0]))
            .basic_auth("guest", Some("guest"))
            .json(&body)
            .send()
            .await
            .expect("the management API answers");
        assert!(response.status().is_success(), "PUT {path}");
    }

    /// The node each process's login consumer connection is on, by pid.
    async fn consumer_nodes(&self, vhost: &str) -> Vec<(u32, String)> {
        let connections = self.get(&format!("/vhosts/{vhost}/connections")).await;
        connections
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let name = c["client_properties"]["connection_name"].as_str()?;
                let pid = name
                    .strip_prefix("identity-sync logins (pid ")?
                    .strip_suffix(')')?;
                Some((pid.parse().ok()?, c["node"].as_str()?.to_owned()))
            })
            .collect()
    }

    /// The work queue's leader, and how many of its members are online.
    async fn work_queue(&self, vhost: &str) -> (String, usize) {
        let queue = self
            .get(&format!("/queues/{vhost}/idsync.login-completed"))
            .await;
        (
            queue["leader"].as_str().unwrap_or("").to_owned(),
            queue["online"].as_array().map_or(0, Vec::len),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new(script("cluster-down"))
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .status();
    }
}

/// The subscriber: consumes its quorum queue through the first node that answers, and again
/// through the next when that node is lost, until `stop`. Each event is acknowledged once
/// recorded: one cut short by a node's loss is delivered again (a copy, which the set of ids
/// absorbs).
fn subscribe(
    urls: Vec<String>,
    stop: CancellationToken,
) -> (Arc<Mutex<Captured>>, tokio::task::JoinHandle<()>) {
    let captured = Arc::new(Mutex::new(Captured::default()));
    let task = tokio::spawn({
        let captured = captured.clone();
        async move {
            for url in urls.iter().cycle() {
                if stop.is_cancelled() {
                    break;
                }
                let consumed = async {
                    let connection =
                        Connection::connect(url, ConnectionProperties::default()).await?;
                    let channel = connection.create_channel().await?;
                    channel.basic_qos(500, BasicQosOptions::default()).await?;
                    let mut deliveries = channel
                        .basic_consume(
                            "captured-events".into(),
                            "subscriber".into(),
                            BasicConsumeOptions::default(),
                            FieldTable::default(),
                        )
                        .await?;
                    while let Some(delivery) = deliveries.next().await {
                        let delivery = delivery?;
                        let event: Value = serde_json::from_slice(&delivery.data).unwrap();
                        captured.lock().unwrap().add(event);
                        delivery.ack(BasicAckOptions::default()).await?;
                    }
                    Ok::<_, lapin::Error>(())
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = consumed => {}
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    (captured, task)
}

/// The events the subscriber received.
#[derive(Default)]
struct Captured {
    ids: HashSet<String>,
    copies: usize,
    /// Each event's id and CloudEvents `time` (when a worker decided it).
    times: Vec<(uuid::Uuid, chrono::DateTime<chrono::Utc>)>,
}

impl Captured {
    fn add(&mut self, event: Value) {
        let id = event["id"].as_str().unwrap().to_owned();
        let time = chrono::DateTime::parse_from_rfc3339(event["time"].as_str().unwrap())
            .unwrap()
            .to_utc();
        self.times.push((id.parse().unwrap(), time));
        self.ids.insert(id);
        self.copies += 1;
    }

    /// The events decided after `at` that arrived.
    fn since(&self, at: chrono::DateTime<chrono::Utc>) -> Vec<uuid::Uuid> {
        self.times
            .iter()
            .filter(|(_, time)| *time > at)
            .map(|(id, _)| *id)
            .collect()
    }
}

/// How many processes published `ids`.
async fn publishers_of(db: &sqlx::PgPool, ids: Vec<uuid::Uuid>) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT origin) FROM outbox WHERE message_id = ANY($1)")
        .bind(&ids)
        .fetch_one(db)
        .await
        .unwrap()
}

/// What one fault did.
#[derive(Debug, serde::Serialize)]
struct Fault {
    killed: String,
    why: &'static str,
    /// Decided when the node was killed.
    decided_before: i64,
    /// From the kill until more logins were decided than the workers held unacknowledged then
    /// (their prefetch): decisions of deliveries made after the kill.
    seconds_to_next_decision: f64,
    /// From the kill until every worker consumes again, each on a node that runs.
    seconds_to_both_consuming: f64,
    /// From the kill until the subscriber received events decided after it from every worker,
    /// the node still down.
    seconds_to_events_flowing: f64,
    /// Where each worker's consumer was before and after.
    consumers_before: Vec<(u32, String)>,
    consumers_after: Vec<(u32, String)>,
}

/// How soon after a node's loss every worker's new events must reach the subscriber: a quorum
/// queue that lost its leader elects another within seconds.
const EVENTS_FLOWING_WITHIN: Duration = Duration::from_secs(15);

async fn decided(db: &sqlx::PgPool) -> i64 {
    count(db, "SELECT count(*) FROM processed_events").await
}

/// Kills node `index` mid-stream and waits for decisions to resume and for both workers to
/// consume again; then starts the node again and waits until the work queue has every member.
async fn fault(
    cluster: &mut Cluster,
    index: usize,
    why: &'static str,
    vhost: &str,
    db: &sqlx::PgPool,
    workers: &[u32],
    captured: &Mutex<Captured>,
) -> Fault {
    let killed = cluster.nodes[index].name.clone();
    let consumers_before = cluster.consumer_nodes(vhost).await;
    let decided_before = decided(db).await;
    let at = Instant::now();
    // A second later than the kill: an event with a later `time` was decided after it, by a
    // clock of this machine.
    let after_kill = chrono::Utc::now() + chrono::Duration::seconds(1);
    cluster.kill(index);
    // More than the two workers could have had delivered before the kill (their prefetch):
    // these decisions were taken after it.
    let resumed = decided(db).await + 2 * PREFETCH + 1;
    wait_until(WAIT * 4, || async { decided(db).await >= resumed })
        .await
        .expect("decisions resumed after the node was killed");
    let seconds_to_next_decision = at.elapsed().as_secs_f64();
    let consumers_after = loop {
        let consumers = cluster.consumer_nodes(vhost).await;
        let back = workers.iter().all(|pid| {
            consumers
                .iter()
                .any(|(p, node)| p == pid && *node != killed)
        });
        if back {
            break consumers;
        }
        assert!(at.elapsed() < WAIT * 4, "both workers consuming again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds_to_both_consuming = at.elapsed().as_secs_f64();
    // Every worker's events keep reaching the subscriber while the node is down.
    loop {
        let since = captured.lock().unwrap().since(after_kill);
        if publishers_of(db, since).await == workers.len() as i64 {
            break;
        }
        assert!(
            at.elapsed() < EVENTS_FLOWING_WITHIN,
            "events decided after the loss of {killed} did not reach the subscriber from every \
             worker within {EVENTS_FLOWING_WITHIN:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seconds_to_events_flowing = at.elapsed().as_secs_f64();
    cluster.restart(index);
    wait_until(WAIT * 4, || async {
        cluster.work_queue(vhost).await.1 == 3
    })
    .await
    .expect("the restarted node back among the work queue's members");
    Fault {
        killed,
        why,
        decided_before,
        seconds_to_next_decision,
        seconds_to_both_consuming,
        seconds_to_events_flowing,
        consumers_before,
        consumers_after,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_loses_the_workers_node_and_then_the_queue_leader() {
    let services = Services::new().await;
    let db = services.migrate().await;
    let mut cluster = Cluster::up(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("target/rabbit-cluster-{}", &services.vhost)),
    );
    // The test's own vhost on the cluster, as on the system broker.
    let vhost = services.vhost.clone();
    cluster.put(&format!("/vhosts/{vhost}"), json!({})).await;
    cluster
        .put(
            &format!("/permissions/{vhost}/guest"),
            json!({"configure": ".*", "write": ".*", "read": ".*"}),
        )
        .await;
    let urls: Vec<String> = (0..3).map(|i| cluster.url(i, &vhost)).collect();
    // Declared through node 3, which therefore leads the queues: the first fault (node 1, where
    // worker A connects) is not also the leader's.
    let capture = capture_queue_at(&urls[2], &services).await;
    let list = |order: [usize; 3]| order.map(|i| urls[i].clone()).join(",");
    let a = WorkerProcess::start_with_env(&services, &[("IDSYNC__AMQP__URL", &list([0, 1, 2]))]);
    let b = WorkerProcess::start_with_env(&services, &[("IDSYNC__AMQP__URL", &list([1, 2, 0]))]);
    let workers = [a.child.id(), b.child.id()];
    wait_until(WAIT * 2, || async {
        cluster.consumer_nodes(&vhost).await.len() == 2
    })
    .await
    .expect("both workers consuming");
    let (leader, _) = cluster.work_queue(&vhost).await;
    assert_eq!(leader, cluster.nodes[2].name, "node 3 leads the work queue");

    let stop = CancellationToken::new();
    // The platform publishes a steady stream through node 3 first (then the others in turn),
    // until told to stop.
    let publisher = tokio::spawn({
        let (urls, stop) = (
            vec![urls[2].clone(), urls[1].clone(), urls[0].clone()],
            stop.clone(),
        );
        async move {
            let next = |n: usize| Some(login("plain", &format!("k-{n}"), json!({})));
            let count = AtomicUsize::new(0);
            publish_stream(&urls, next, &stop, Pace::Each { pause: 4 }, &count).await
        }
    });
    let started = Instant::now();

    let warm = env_number("IDSYNC_FAULT_EVENTS", 3000) as i64 / 3;
    wait_until(WAIT * 2, || async { decided(&db).await >= warm })
        .await
        .expect("logins flowing before the first fault");
    let a_node = cluster
        .consumer_nodes(&vhost)
        .await
        .into_iter()
        .find(|(pid, _)| *pid == workers[0])
        .map(|(_, node)| node)
        .expect("worker A's consumer");
    let a_index = cluster.index_of(&a_node);
    let subscriber_stop = CancellationToken::new();
    let (captured, subscriber) = subscribe(
        vec![urls[2].clone(), urls[1].clone(), urls[0].clone()],
        subscriber_stop.clone(),
    );
    let first = fault(
        &mut cluster,
        a_index,
        "the node worker A is connected to",
        &vhost,
        &db,
        &workers,
        &captured,
    )
    .await;

    let more = decided(&db).await + warm;
    wait_until(WAIT * 2, || async { decided(&db).await >= more })
        .await
        .expect("logins flowing before the second fault");
    let (leader, _) = cluster.work_queue(&vhost).await;
    let leader_index = cluster.index_of(&leader);
    let second = fault(
        &mut cluster,
        leader_index,
        "the node leading the work queue",
        &vhost,
        &db,
        &workers,
        &captured,
    )
    .await;

    // A while longer after the second node is back, then the platform stops.
    let tail = decided(&db).await + warm / 2;
    wait_until(WAIT * 2, || async { decided(&db).await >= tail })
        .await
        .expect("logins flowing after the faults");
    stop.cancel();
    let (total, copies) = publisher.await.unwrap();
    wait_until(WAIT * 4, || async { decided(&db).await as usize == total })
        .await
        .expect("every login decided");
    outbox_drained(&db, WAIT * 2, "the outbox caught up").await;
    let reading = Instant::now();
    while captured.lock().unwrap().ids.len() < total {
        assert!(
            reading.elapsed() < WAIT * 2,
            "every event reached the subscriber"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    subscriber_stop.cancel();
    subscriber.await.unwrap();
    let (ids, delivered) = {
        let captured = captured.lock().unwrap();
        (captured.ids.clone(), captured.copies)
    };
    let users = count(&db, "SELECT count(*) FROM users").await;
    // Which worker decided what: each decision's user.created carries its process's origin.
    let by_worker: Vec<i64> = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE kind = 'event' GROUP BY origin ORDER BY 1 DESC",
    )
    .fetch_all(&db)
    .await
    .unwrap();

    let (mut a, mut b) = (a, b);
    let still_running =
        a.child.try_wait().unwrap().is_none() && b.child.try_wait().unwrap().is_none();
    let mut figures = Figures::new("cluster-node-loss");
    figures.sent = total as i64;
    figures.decided = decided(&db).await;
    figures.lost = total as i64 - figures.decided + (total as i64 - ids.len() as i64);
    figures.doubled = users - total as i64;
    figures.faults = 2;
    figures
        .note("faults", [&first, &second])
        .note("decided_per_worker", &by_worker)
        .note("publishes_including_retries", copies)
        .note(
            "event_copies_delivered",
            delivered.saturating_sub(ids.len()),
        )
        .note("workers_never_restarted", still_running)
        .note("seconds", started.elapsed().as_secs_f64());
    figures.report();
    assert_eq!((figures.lost, figures.doubled), (0, 0));
    assert!(still_running, "neither worker stopped");
    for fault in [&first, &second] {
        assert!(
            fault.decided_before >= warm && (fault.decided_before as usize) < total,
            "the fault struck mid-stream: {fault:?}"
        );
    }
    assert_ne!(first.killed, second.killed, "two different nodes were lost");
    assert_eq!(by_worker.len(), 2, "both workers decided logins");
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
    verify(&services.db_url).await;
    drop(capture);
}
