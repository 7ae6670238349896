//! Three replicas, one PostgreSQL, one simulated upstream: the scenarios.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::support::message;
use super::{ADMIN, Cluster, Fleet, FleetOpts};

/// Creates a client key through replica `i`'s admin API; returns the key.
async fn create_key(f: &Fleet, i: usize, body: Value) -> String {
    let r = f
        .client
        .post(f.replicas[i].url("/api/keys"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    v["key"].as_str().unwrap().to_owned()
}

async fn status_of(f: &Fleet, i: usize, key: &str) -> u16 {
    f.post(i, "/v1/messages", Some(key), &message("hi", false))
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_replica_is_refused_on_the_others_within_a_second() {
    let pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    let key = create_key(&f, 0, json!({"name": "team"})).await;
    // Created on replica 1, usable on 2 and 3 within a second.
    let t0 = Instant::now();
    for i in [1, 2] {
        while status_of(&f, i, &key).await != 200 {
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "create not seen by replica {i}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let r = f
        .client
        .delete(f.replicas[0].url("/api/keys/team"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    for i in [1, 2] {
        loop {
            let s = status_of(&f, i, &key).await;
            if s == 401 {
                break;
            }
            assert_eq!(s, 200);
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "replica {i} still accepts the revoked key after {:?}",
                t0.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(1), "{took:?}");
    // Rotation too: the old key stops everywhere, the new one works everywhere.
    let k2 = create_key(&f, 2, json!({"name": "other"})).await;
    let r = f
        .client
        .post(f.replicas[2].url("/api/keys/other/rotate"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let rotated: Value = r.json().await.unwrap();
    let k3 = rotated["key"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    while status_of(&f, 0, &k2).await != 401 || status_of(&f, 0, &k3).await != 200 {
        assert!(t0.elapsed() < Duration::from_secs(1), "rotation not seen");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn previous_response_id_from_replica_1_continues_on_replica_3() {
    let pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    let first = f
        .post(
            0,
            "/openai/v1/responses",
            Some(ADMIN),
            &json!({"model": "gpt-4o", "input": "my name is Ada", "store": true}),
        )
        .await;
    let first = first.bytes().await.unwrap();
    let first: Value = serde_json::from_slice(&first).unwrap();
    let id = first["id"].as_str().unwrap();
    let next = f
        .post(
            2,
            "/openai/v1/responses",
            Some(ADMIN),
            &json!({"model": "gpt-4o", "input": "what is my name?", "previous_response_id": id}),
        )
        .await;
    assert_eq!(next.status(), 200);
    let next: Value = next.json().await.unwrap();
    assert_eq!(next["previous_response_id"], id);
    // The upstream got the whole conversation from replica 3.
    let reqs = f.sim.state.requests();
    let last = reqs
        .iter()
        .rev()
        .find(|r| r.path == "/v1/messages")
        .unwrap();
    let up: Value = serde_json::from_slice(&last.body).unwrap();
    let msgs = up["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{up}");
    assert!(msgs[0].to_string().contains("my name is Ada"));
    // And GET works on replica 2.
    let got = f
        .client
        .get(f.replicas[1].url(&format!("/openai/v1/responses/{id}")))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_stopped_mid_run_requests_still_served_then_queued_rows_arrive() {
    let mut pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    let key = create_key(&f, 0, json!({"name": "k"})).await;
    let t0 = Instant::now();
    for i in 0..3 {
        while status_of(&f, i, &key).await != 200 {
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Everything so far is in the database.
    for r in &f.replicas {
        let w = r.state.usage.clone().unwrap();
        tokio::task::spawn_blocking(move || w.flush())
            .await
            .unwrap();
    }
    let before = wait_rows(&pg, 3, Duration::from_secs(5)).await;
    pg.stop();
    // Served from what each replica has cached: the key, the credentials.
    for n in 0..9 {
        let s = status_of(&f, n % 3, &key).await;
        assert_eq!(s, 200, "request {n} with the database down");
    }
    // A response stored meanwhile (on replica 1, kept there and queued for the database).
    let stored: Value = f
        .post(
            0,
            "/openai/v1/responses",
            Some(&key),
            &json!({"model": "gpt-4o", "input": "remember 42", "store": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    let stored_id = stored["id"].as_str().unwrap().to_owned();
    // /health says degraded once a store noticed.
    let t0 = Instant::now();
    for i in 0..3 {
        loop {
            let h = f.health(i).await;
            if h["status"] == "degraded" && h["database"]["up"] == false {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "replica {i}: {h:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let metrics = f
        .client
        .get(f.replicas[0].url("/metrics"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // (The metrics registry is per process, and these replicas share one: its values are
    // checked through /health; here, that the series are exported.)
    assert!(metrics.contains("ccproxy_database_up "), "{metrics}");
    assert!(metrics.contains("ccproxy_usage_rows_queued "), "{metrics}");
    // The ten rows wait in the replicas' writers.
    let t0 = Instant::now();
    loop {
        let mut queued = 0;
        for i in 0..3 {
            queued += f.health(i).await["usage"]["rows_queued"].as_u64().unwrap();
        }
        if queued == 10 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{queued} rows queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pg.run();
    // The rows queued meanwhile arrive; the replicas are healthy again.
    let after = wait_rows(&pg, before + 10, Duration::from_secs(20)).await;
    assert_eq!(after, before + 10);
    let t0 = Instant::now();
    for i in 0..3 {
        loop {
            let h = f.health(i).await;
            if h["status"] == "ok" && h["usage"]["rows_queued"] == 0 {
                assert_eq!(h["usage"]["rows_dropped"], 0, "{h:#}");
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "replica {i}: {h:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The response stored during the outage continues on replica 3.
    let t0 = Instant::now();
    loop {
        let r = f
            .post(
                2,
                "/openai/v1/responses",
                Some(&key),
                &json!({"model": "gpt-4o", "input": "what was it?", "previous_response_id": stored_id}),
            )
            .await;
        if r.status() == 200 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Key changes flow again (the listeners reconnected).
    let r = f
        .client
        .delete(f.replicas[0].url("/api/keys/k"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    let status = r.status();
    assert_eq!(status, 200, "{}", r.text().await.unwrap());
    let t0 = Instant::now();
    for i in [1, 2] {
        while status_of(&f, i, &key).await != 401 {
            assert!(t0.elapsed() < Duration::from_secs(2), "replica {i}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until the `requests` table has at least `n` rows; returns how many.
async fn wait_rows(pg: &Cluster, n: i64, limit: Duration) -> i64 {
    wait_count(pg, "SELECT count(*) FROM requests", n, limit).await
}

/// Waits until `sql` (a count) says at least `n`; returns it.
async fn wait_count(pg: &Cluster, sql: &str, n: i64, limit: Duration) -> i64 {
    let t0 = Instant::now();
    loop {
        let got = pg.count(sql).await;
        if got >= n {
            return got;
        }
        assert!(t0.elapsed() < limit, "{got} rows of {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_requests_over_three_replicas_at_token_expiry_make_one_refresh() {
    at_expiry(false).await;
}

/// Without `database_secret`, replicas that share the credentials file still refresh once
/// (the lock, and the file re-read under it); no token is written to the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_sharing_a_credentials_file_refresh_once_without_a_secret() {
    at_expiry(true).await;
}

async fn at_expiry(shared_file: bool) {
    use std::sync::atomic::Ordering;
    let pg = Cluster::start();
    // Each replica has its own copy of the credentials file (separate machines, unless
    // `shared_file`), due for a refresh 2 s from now: the replicas' background refreshers and
    // the requests all reach it at once.
    let t0 = Instant::now();
    let creds = super::support::claude_credentials(
        super::support::OAUTH_TOKEN,
        super::support::REFRESH_TOKEN,
        3_000,
    );
    let f = Fleet::start(
        &pg,
        FleetOpts {
            credentials: Some(creds),
            database_secret: (!shared_file).then_some("fleet-secret-for-tests"),
            shared_credentials_file: shared_file,
            refresh_skew: Some(Duration::from_secs(1)),
        },
    )
    .await;
    // A slow token endpoint widens the window in which the others would refresh too.
    f.sim.state.token_delay_ms.store(300, Ordering::SeqCst);
    assert_eq!(
        f.sim.state.token_calls.load(Ordering::SeqCst),
        0,
        "not due yet"
    );
    tokio::time::sleep(Duration::from_millis(2_050).saturating_sub(t0.elapsed())).await;
    let f = std::sync::Arc::new(f);
    let mut tasks = Vec::new();
    for n in 0..200 {
        let f = f.clone();
        tasks.push(tokio::spawn(async move {
            let r = f
                .post(n % 3, "/v1/messages", Some(ADMIN), &message("hi", false))
                .await;
            r.status().as_u16()
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    // Past the old token's expiry every replica serves with the new one.
    tokio::time::sleep(Duration::from_millis(3_300).saturating_sub(t0.elapsed())).await;
    for n in 0..30 {
        let r = f
            .post(n % 3, "/v1/messages", Some(ADMIN), &message("hi", false))
            .await;
        assert_eq!(r.status(), 200, "after expiry, replica {}", n % 3);
    }
    assert_eq!(
        f.sim.state.token_calls.load(Ordering::SeqCst),
        1,
        "exactly one refresh upstream for the fleet"
    );
    if shared_file {
        assert_eq!(pg.count("SELECT count(*) FROM oauth_tokens").await, 0);
        return;
    }
    // The shared row is sealed: neither token appears in the database in clear.
    let url = pg.url();
    let sealed: Vec<u8> = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(url.expose(), postgres::NoTls).unwrap();
        c.query_one("SELECT sealed FROM oauth_tokens", &[])
            .unwrap()
            .get(0)
    })
    .await
    .unwrap();
    assert!(
        !sealed
            .windows(12)
            .any(|w| w == b"sk-ant-oat01" || w == b"sk-ant-ort01")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_shared_by_three_replicas_is_exceeded_by_at_most_one_request_per_replica() {
    shared_budget(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shared_budget_holds_under_concurrent_clients_on_every_replica() {
    shared_budget(4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_budget_used_on_one_replica_gets_what_the_idle_replicas_give_back() {
    let pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    let budget = 0.02;
    let key = create_key(
        &f,
        0,
        json!({"name": "pinned", "budget_usd": budget, "period": "day"}),
    )
    .await;
    // Every replica serves the key a little (each takes a lease), then a client kept on
    // replica 0 by its balancer goes on alone until the budget is spent.
    let mut served = 0i64;
    let mut waited = 0;
    for i in [1, 2, 0] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut here = 0;
        loop {
            assert!(
                Instant::now() < deadline,
                "replica {i}: the budget was not spent in time (served {served}, waited {waited})"
            );
            let r = f
                .post(i, "/v1/messages", Some(&key), &message("hi", false))
                .await;
            match r.status().as_u16() {
                200 => {
                    served += 1;
                    here += 1;
                    if i != 0 && here == 3 {
                        break;
                    }
                }
                429 => {
                    let text = r.text().await.unwrap();
                    if text.contains("has spent") {
                        assert_eq!(i, 0, "{text}");
                        break;
                    }
                    assert!(text.contains("share of the budget"), "{text}");
                    waited += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                401 => tokio::time::sleep(Duration::from_millis(10)).await,
                s => panic!("replica {i}: {s}"),
            }
        }
    }
    let rows = wait_count(
        &pg,
        "SELECT count(*) FROM requests WHERE client_key = 'pinned' AND status = 200",
        served,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(rows, served);
    let url = pg.url();
    let (spent, max, leases): (f64, f64, Vec<(f64, f64)>) =
        tokio::task::spawn_blocking(move || {
            let mut c = postgres::Client::connect(url.expose(), postgres::NoTls).unwrap();
            let r = c
                .query_one(
                    "SELECT SUM(cost_usd), MAX(cost_usd) FROM requests WHERE client_key = 'pinned'",
                    &[],
                )
                .unwrap();
            let leases = c
                .query("SELECT granted, used FROM budget_leases", &[])
                .unwrap()
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect();
            (r.get(0), r.get(1), leases)
        })
        .await
        .unwrap();
    let shown = format!(
        "spent {spent} of {budget} (max request {max}; replica 0 waited {waited} times; leases {leases:?})"
    );
    assert!(spent >= budget - 1e-9, "{shown}");
    assert!(spent <= budget + 3.0 * max + 1e-9, "{shown}");
    // The idle replicas (the two smaller leases) gave back what they did not spend. (Replica
    // 0's row holds the use it last reported: its last requests may not be in it yet.)
    assert_eq!(leases.len(), 3, "{shown}");
    let mut leases = leases;
    leases.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        leases[..2].iter().all(|(g, u)| g <= &(u + 1e-12)),
        "{shown}"
    );
}

/// A budget shared by three replicas, `clients` clients per replica each sending requests
/// one after another until refused: spent in whole, exceeded by at most one request per
/// replica.
async fn shared_budget(clients: usize) {
    let pg = Cluster::start();
    let f = std::sync::Arc::new(Fleet::start(&pg, FleetOpts::default()).await);
    let budget = 0.02;
    let key = create_key(
        &f,
        0,
        json!({"name": "shared", "budget_usd": budget, "period": "day"}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in (0..3).flat_map(|i| std::iter::repeat_n(i, clients)) {
        let f = f.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = 0;
            for _ in 0..2000 {
                let r = f
                    .post(i, "/v1/messages", Some(&key), &message("hi", false))
                    .await;
                match r.status().as_u16() {
                    200 => served += 1,
                    429 => {
                        let text = r.text().await.unwrap();
                        if text.contains("has spent") {
                            return served;
                        }
                        assert!(text.contains("share of the budget"), "{text}");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    // The key may not have reached this replica yet.
                    401 => tokio::time::sleep(Duration::from_millis(10)).await,
                    s => panic!("replica {i}: {s}"),
                }
            }
            panic!("replica {i} never refused the key");
        }));
    }
    let mut served = vec![0; 3];
    for (n, t) in tasks.into_iter().enumerate() {
        served[n / clients] += t.await.unwrap();
    }
    assert!(
        served.iter().all(|&n| n > 0),
        "every replica served some: {served:?}"
    );
    let total: i64 = served.iter().sum();
    let rows = wait_count(
        &pg,
        "SELECT count(*) FROM requests WHERE client_key = 'shared' AND status = 200",
        total,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(rows, total);
    let url = pg.url();
    let (spent, max, leases): (f64, f64, String) = tokio::task::spawn_blocking(move || {
        let mut c = postgres::Client::connect(url.expose(), postgres::NoTls).unwrap();
        let r = c
            .query_one(
                "SELECT SUM(cost_usd), MAX(cost_usd) FROM requests WHERE client_key = 'shared'",
                &[],
            )
            .unwrap();
        let leases = c
            .query("SELECT replica, granted, used FROM budget_leases", &[])
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{}: {} / {}",
                    r.get::<_, String>(0),
                    r.get::<_, f64>(1),
                    r.get::<_, f64>(2)
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        (r.get(0), r.get(1), leases)
    })
    .await
    .unwrap();
    assert!(max > 0.0);
    // The stated bound: the budget plus one request in flight per replica.
    assert!(
        spent <= budget + 3.0 * max + 1e-9,
        "spent {spent} of {budget} (max request {max}, served {served:?}; leases {leases})"
    );
    // And the budget was used, not refused early: a replica refuses only once its own lease is
    // used up and the fleet has leased the whole budget, so every lease was spent.
    assert!(
        spent >= budget - 1e-9,
        "spent {spent} of {budget} (max request {max}, served {served:?}; leases {leases})"
    );
    // Every replica's dashboard data shows the fleet's requests.
    for i in 0..3 {
        let v: Value = f
            .client
            .get(f.replicas[i].url("/api/usage?since=all&key=shared"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            v["totals"]["requests"].as_i64().unwrap() >= total,
            "replica {i}: {v:#}"
        );
        assert!((v["totals"]["cost_usd"].as_f64().unwrap() - spent).abs() < 1e-9);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_rate_limit_holds_across_the_replicas() {
    let pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    // The replicas know there are three (the heartbeat) before the limit is shared.
    let t0 = Instant::now();
    for i in 0..3 {
        while f.health(i).await["database"]["replicas"] != 3 {
            assert!(t0.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let key = create_key(&f, 0, json!({"name": "limited", "rpm": 6})).await;
    let t0 = Instant::now();
    for i in 1..3 {
        // Wait for the key without spending requests: /api/keys lists it everywhere.
        loop {
            let v: Value = f
                .client
                .get(f.replicas[i].url("/api/keys"))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if v.to_string().contains("limited") {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(2));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut admitted = [0; 3];
    for n in 0..18 {
        if status_of(&f, n % 3, &key).await == 200 {
            admitted[n % 3] += 1;
        }
    }
    // rpm 6 over three replicas: two a minute each, six for the fleet.
    assert_eq!(admitted, [2, 2, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cooldown_seen_by_one_replica_is_used_by_the_others() {
    let pg = Cluster::start();
    let f = Fleet::start(&pg, FleetOpts::default()).await;
    let now = ccproxy::util::time::now_secs();
    let pool = f.replicas[0].state.pool.get();
    let member = &pool.members()[0];
    member.cool_down(now + 120, "upstream 429 (test)");
    let name = member.name.clone();
    let t0 = Instant::now();
    for i in [1, 2] {
        loop {
            let p = f.replicas[i].state.pool.get();
            let m = p.members().iter().find(|m| m.name == name).unwrap();
            if let Some(b) = m.bench(now) {
                assert_eq!(b.until, now + 120);
                assert_eq!(b.state, "cooling");
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(3),
                "replica {i} did not see the cooldown"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_and_the_database_going_away_lose_no_request_in_flight_on_the_others() {
    let mut pg = Cluster::start();
    let mut f = Fleet::start(&pg, FleetOpts::default()).await;
    let mut tasks = Vec::new();
    for n in 0..6 {
        let url = f.replicas[if n % 2 == 0 { 0 } else { 2 }].url("/v1/messages");
        let client = f.client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .header("x-api-key", ADMIN)
                .header("anthropic-version", "2023-06-01")
                .json(&message("[sim:silent=800] tell me a story", true))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (status, r.text().await.unwrap())
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Replica 2 goes away, then the database.
    drop(f.replicas.remove(1));
    pg.stop();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("message_stop"), "{body}");
    }
}
