//! The review store, one suite run against SQLite (a file, as embedded) and against a real
//! PostgreSQL server started by the test: lifecycle, idempotent and racing decisions,
//! expiry, exactly-once outcomes, filters, controls, overrides, durability across reopen.

#![allow(clippy::unwrap_used)] // test helpers fail loudly by design
#![allow(clippy::disallowed_methods)] // waiting for the PostgreSQL child

mod common;

use prescale::store::{
    ControlChange, Controls, Override, RecFilter, RecState, Recommendation, Store, StoreError,
    new_id,
};

fn rec(workload: &str, to: u32, now: i64) -> Recommendation {
    common::recommendation("shop", workload, 3, to, now)
}

async fn audit_count(s: &Store, target: &str, action: &str) -> usize {
    s.audit_log(Some(target), 1000, 0)
        .await
        .unwrap()
        .iter()
        .filter(|a| a.action == action)
        .count()
}

/// What the loop reads (`lapsed`, `all_last_applied`, kept in `heads` by every write),
/// against the same answers computed from the whole history, as the store did before.
async fn assert_heads_match_history(s: &Store, raw: &sqlx::AnyPool) {
    use sqlx::Row;
    let lapsed: std::collections::HashSet<String> = sqlx::query(
        "SELECT r.namespace, r.workload FROM recommendations r \
         WHERE r.state IN ('expired', 'failed') AND NOT EXISTS (SELECT 1 FROM recommendations n \
         WHERE n.namespace = r.namespace AND n.workload = r.workload \
         AND (n.created_at > r.created_at OR (n.created_at = r.created_at AND n.id > r.id)))",
    )
    .fetch_all(raw)
    .await
    .unwrap()
    .iter()
    .map(|r| format!("{}/{}", r.get::<String, _>(0), r.get::<String, _>(1)))
    .collect();
    let applied: std::collections::HashMap<String, u32> = sqlx::query(
        "SELECT r.namespace, r.workload, r.to_replicas FROM recommendations r \
         WHERE r.state = 'applied' AND NOT EXISTS (SELECT 1 FROM recommendations n \
         WHERE n.namespace = r.namespace AND n.workload = r.workload AND n.state = 'applied' \
         AND (n.updated_at > r.updated_at OR (n.updated_at = r.updated_at AND n.id > r.id)))",
    )
    .fetch_all(raw)
    .await
    .unwrap()
    .iter()
    .map(|r| {
        let to: i64 = r.get(2);
        (
            format!("{}/{}", r.get::<String, _>(0), r.get::<String, _>(1)),
            u32::try_from(to).unwrap(),
        )
    })
    .collect();
    assert_eq!(s.lapsed().await.unwrap(), lapsed);
    assert_eq!(s.all_last_applied().await.unwrap(), applied);
}

/// A connection of its own to the store's database, as another (older) binary would have.
async fn raw_pool(url: &str) -> sqlx::AnyPool {
    sqlx::any::install_default_drivers();
    sqlx::AnyPool::connect(url).await.unwrap()
}

/// Each workload's lapsed wish and last applied replicas through a lifecycle, and with many
/// writers of the same workloads at once; a write the store did not make (an older binary's)
/// is taken up at the next open.
async fn heads(url: &str) {
    let s = Store::open(url).await.unwrap();
    let raw = raw_pool(url).await;
    let now = 1_900_000_000;
    let key = "shop/heads";
    let pending = rec("heads", 4, now);
    s.create(&pending, "prescale").await.unwrap();
    assert!(!s.lapsed().await.unwrap().contains(key));
    assert!(!s.all_last_applied().await.unwrap().contains_key(key));
    assert!(s.expire(now + 601).await.unwrap() >= 1);
    assert_eq!(s.get(&pending.id).await.unwrap().state, RecState::Expired);
    assert!(s.lapsed().await.unwrap().contains(key), "expired undecided");
    let approved = Recommendation {
        state: RecState::Approved,
        ..rec("heads", 9, now + 700)
    };
    s.create(&approved, "prescale").await.unwrap();
    assert!(!s.lapsed().await.unwrap().contains(key), "a newer wish");
    assert!(
        s.finish(&approved.id, RecState::Applied, "ok", now + 710)
            .await
            .unwrap()
    );
    assert_eq!(s.all_last_applied().await.unwrap()[key], 9);
    let rejected = rec("heads", 11, now + 800);
    s.create(&rejected, "prescale").await.unwrap();
    s.decide(&rejected.id, RecState::Rejected, "bob", None, now + 810)
        .await
        .unwrap();
    assert!(
        !s.lapsed().await.unwrap().contains(key),
        "rejected is not lapsed"
    );
    let failing = Recommendation {
        state: RecState::Approved,
        ..rec("heads", 12, now + 900)
    };
    s.create(&failing, "prescale").await.unwrap();
    assert!(
        s.finish(&failing.id, RecState::Failed, "403", now + 910)
            .await
            .unwrap()
    );
    assert!(s.lapsed().await.unwrap().contains(key), "failed");
    assert_eq!(
        s.all_last_applied().await.unwrap()[key],
        9,
        "still the applied one"
    );
    assert_heads_match_history(&s, &raw).await;

    // Writers racing on four workloads: proposals, decisions, outcomes and expiry at once.
    // Four replicas of prescale on one database, one of them opening (rebuilding) meanwhile.
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(std::sync::Arc::new(Store::open(url).await.unwrap()));
    }
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        if i == 20 {
            replicas.push(std::sync::Arc::new(Store::open(url).await.unwrap()));
        }
        let s = replicas[i as usize % replicas.len()].clone();
        tasks.push(tokio::spawn(async move {
            let w = format!("race{}", i % 4);
            let t = now + 1000 + i;
            let state = if i % 3 == 0 {
                RecState::Approved
            } else {
                RecState::Pending
            };
            let r = Recommendation {
                state,
                valid_until: t + if i % 5 == 0 { 0 } else { 600 },
                ..rec(&w, 2 + (i % 7) as u32, t)
            };
            if s.create(&r, "prescale").await.unwrap() {
                match i % 3 {
                    0 => drop(
                        s.finish(&r.id, RecState::Applied, "ok", t + 1)
                            .await
                            .unwrap(),
                    ),
                    1 => drop(s.decide(&r.id, RecState::Rejected, "bob", None, t).await),
                    _ => drop(s.expire(t + 1).await.unwrap()),
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_heads_match_history(&s, &raw).await;

    // An older binary (no `heads`) applies the failed one: the open store does not see it...
    sqlx::query("UPDATE recommendations SET state = 'applied', updated_at = $1 WHERE id = $2")
        .bind(now + 2000)
        .bind(&failing.id)
        .execute(&raw)
        .await
        .unwrap();
    assert_eq!(s.all_last_applied().await.unwrap()[key], 9);
    // ...and a restart rebuilds the heads from the history.
    drop(s);
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.all_last_applied().await.unwrap()[key], 12);
    assert!(!s.lapsed().await.unwrap().contains(key));
    assert_heads_match_history(&s, &raw).await;
}

async fn suite(url: &str) {
    let s = Store::open(url).await.unwrap();
    let now = 1_800_000_000;

    // Round trip, reason included.
    let a = rec("web", 5, now);
    s.create(&a, "prescale").await.unwrap();
    assert_eq!(s.get(&a.id).await.unwrap(), a);
    assert!(matches!(s.get("nope").await, Err(StoreError::NotFound)));

    // A newer pending one supersedes it.
    let b = rec("web", 7, now + 60);
    s.create(&b, "prescale").await.unwrap();
    assert_eq!(s.get(&a.id).await.unwrap().state, RecState::Superseded);
    assert_eq!(audit_count(&s, &a.id, "supersede").await, 1);
    assert!(matches!(
        s.decide(&a.id, RecState::Approved, "alice", None, now + 61)
            .await,
        Err(StoreError::Conflict(RecState::Superseded))
    ));

    // The same wish again (another replica, or the next loop) is not a new recommendation.
    let same = rec("web", 7, now + 65);
    assert!(!s.create(&same, "prescale").await.unwrap());
    assert!(matches!(s.get(&same.id).await, Err(StoreError::NotFound)));
    assert_eq!(s.get(&b.id).await.unwrap().state, RecState::Pending);

    // Approve: durable, audited once; again: no-op; reject after: conflict.
    let (r, changed) = s
        .decide(
            &b.id,
            RecState::Approved,
            "alice",
            Some("peak at noon"),
            now + 70,
        )
        .await
        .unwrap();
    assert!(changed);
    assert_eq!(r.state, RecState::Approved);
    assert_eq!(r.decided_by.as_deref(), Some("alice"));
    assert_eq!(r.comment.as_deref(), Some("peak at noon"));
    let (_, changed) = s
        .decide(&b.id, RecState::Approved, "alice", None, now + 71)
        .await
        .unwrap();
    assert!(!changed);
    assert_eq!(
        audit_count(&s, &b.id, "approve").await,
        1,
        "one audit entry for two approvals"
    );
    assert!(matches!(
        s.decide(&b.id, RecState::Rejected, "bob", None, now + 72)
            .await,
        Err(StoreError::Conflict(RecState::Approved))
    ));

    // Exactly once: applied recorded once; then approving again is still a no-op.
    assert_eq!(s.approved().await.unwrap().len(), 1);
    assert!(
        s.finish(&b.id, RecState::Applied, "scaled 3 -> 7", now + 80)
            .await
            .unwrap()
    );
    assert!(
        !s.finish(&b.id, RecState::Applied, "again", now + 81)
            .await
            .unwrap()
    );
    assert!(
        !s.finish(&b.id, RecState::Failed, "late", now + 81)
            .await
            .unwrap()
    );
    assert_eq!(audit_count(&s, &b.id, "apply").await, 1);
    assert!(s.approved().await.unwrap().is_empty());
    assert_eq!(
        s.last_applied("shop", "web").await.unwrap().unwrap().id,
        b.id
    );
    assert!(
        !s.decide(&b.id, RecState::Approved, "alice", None, now + 82)
            .await
            .unwrap()
            .1
    );

    // Expiry: a decision after valid_until is refused and the recommendation expires.
    let c = Recommendation {
        valid_until: now + 100,
        ..rec("api", 4, now + 90)
    };
    s.create(&c, "prescale").await.unwrap();
    assert!(matches!(
        s.decide(&c.id, RecState::Approved, "alice", None, now + 101)
            .await,
        Err(StoreError::Conflict(RecState::Expired))
    ));
    assert_eq!(s.get(&c.id).await.unwrap().state, RecState::Expired);
    let d = Recommendation {
        valid_until: now + 100,
        ..rec("db", 4, now + 90)
    };
    s.create(&d, "prescale").await.unwrap();
    assert_eq!(s.expire(now + 200).await.unwrap(), 1);
    assert_eq!(s.expire(now + 300).await.unwrap(), 0);

    // Racing approve and reject on fresh recommendations: exactly one wins each time.
    for round in 0..10 {
        let r = rec(&format!("race{round}"), 9, now + 400);
        s.create(&r, "prescale").await.unwrap();
        let (x, y) = tokio::join!(
            s.decide(&r.id, RecState::Approved, "alice", None, now + 401),
            s.decide(&r.id, RecState::Rejected, "bob", None, now + 401),
        );
        let wins = [&x, &y]
            .iter()
            .filter(|o| matches!(o, Ok((_, true))))
            .count();
        let conflicts = [&x, &y]
            .iter()
            .filter(|o| matches!(o, Err(StoreError::Conflict(_))))
            .count();
        assert_eq!((wins, conflicts), (1, 1), "round {round}: {x:?} / {y:?}");
        let state = s.get(&r.id).await.unwrap().state;
        let winner = if matches!(x, Ok((_, true))) {
            RecState::Approved
        } else {
            RecState::Rejected
        };
        assert_eq!(state, winner);
        let decisions =
            audit_count(&s, &r.id, "approve").await + audit_count(&s, &r.id, "reject").await;
        assert_eq!(decisions, 1);
    }

    // Replicas racing to propose for one workload: at most one pending ever, whatever they
    // ask for; the same wish from both is recorded once.
    for round in 0..10 {
        let w = format!("propose{round}");
        let (x, y) = (rec(&w, 4, now + 500), rec(&w, 4 + round % 2, now + 500));
        let (rx, ry) = tokio::join!(s.create(&x, "replica-a"), s.create(&y, "replica-b"));
        let created = [rx.unwrap(), ry.unwrap()];
        let pending = s
            .list(&RecFilter {
                state: Some(RecState::Pending),
                namespace: Some("shop".into()),
                workload: Some(w.clone()),
                limit: 10,
                offset: 0,
            })
            .await
            .unwrap();
        assert_eq!(pending.len(), 1, "round {round}: {pending:?}");
        assert!(
            created.iter().any(|c| *c),
            "round {round}: one of them was written"
        );
        if round % 2 == 0 {
            assert_eq!(created.iter().filter(|c| **c).count(), 1, "round {round}");
        }
    }

    // Pause and pin at once (two replicas' APIs): both stand, each audited.
    for round in 0..5 {
        let w = format!("ctl{round}");
        let (p, q) = tokio::join!(
            s.change_controls("shop", &w, ControlChange::Paused(true), "a", "pause", now),
            s.change_controls(
                "shop",
                &w,
                ControlChange::Pin(Some((6, now + 60))),
                "b",
                "pin",
                now
            ),
        );
        p.unwrap();
        q.unwrap();
        let c = s.controls("shop", &w).await.unwrap();
        assert_eq!(
            c,
            Controls {
                paused: true,
                pinned_replicas: Some(6),
                pinned_until: Some(now + 60)
            },
            "round {round}"
        );
    }

    // Filters and paging.
    let all = s
        .list(&RecFilter {
            limit: 100,
            ..RecFilter::default()
        })
        .await
        .unwrap();
    // 14 above, and one or two rows from each of the ten proposal races.
    assert!((24..=29).contains(&all.len()), "{}", all.len());
    assert!(
        all.windows(2).all(|w| w[0].created_at >= w[1].created_at),
        "newest first"
    );
    let pending_web = RecFilter {
        state: Some(RecState::Expired),
        namespace: Some("shop".into()),
        workload: Some("api".into()),
        limit: 10,
        offset: 0,
    };
    let got = s.list(&pending_web).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, c.id);
    let page = s
        .list(&RecFilter {
            limit: 5,
            offset: 5,
            ..RecFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(page, all[5..10].to_vec());

    // Controls and overrides, audited.
    assert_eq!(
        s.controls("shop", "web").await.unwrap(),
        Controls::default()
    );
    let pin = Controls {
        paused: false,
        pinned_replicas: Some(12),
        pinned_until: Some(now + 3600),
    };
    let got = s
        .change_controls(
            "shop",
            "web",
            ControlChange::Pin(Some((12, now + 3600))),
            "carol",
            "pin",
            now,
        )
        .await
        .unwrap();
    assert_eq!(got, pin);
    let paused = Controls {
        paused: true,
        ..pin.clone()
    };
    let got = s
        .change_controls(
            "shop",
            "web",
            ControlChange::Paused(true),
            "carol",
            "pause",
            now + 1,
        )
        .await
        .unwrap();
    assert_eq!(got, paused, "the pause keeps the pin");
    assert_eq!(s.controls("shop", "web").await.unwrap(), paused);
    assert_eq!(audit_count(&s, "shop/web", "pause").await, 1);
    let o = Override {
        id: new_id(),
        namespace: "shop".into(),
        workload: "web".into(),
        min_replicas: 10,
        cron: "0 9 * * 1-5".into(),
        timezone: "Europe/Paris".into(),
        duration_seconds: 3600,
        created_at: now,
    };
    s.add_override(&o, "carol").await.unwrap();
    assert_eq!(s.overrides("shop", "web").await.unwrap(), vec![o.clone()]);
    assert!(
        s.delete_override("shop", "web", &o.id, "carol", now)
            .await
            .unwrap()
    );
    assert!(
        !s.delete_override("shop", "web", &o.id, "carol", now)
            .await
            .unwrap()
    );
    assert!(s.overrides("shop", "web").await.unwrap().is_empty());

    // Retention: old ended recommendations and audit entries go; what the loop reads stays.
    let day = 86_400;
    let at = |d: i64| now - d * day;
    let with = |w: &str, to: u32, t: i64, state: RecState| Recommendation {
        state,
        ..rec(w, to, t)
    };
    let r0 = with("old", 2, at(300), RecState::Applied);
    let r1 = with("old", 4, at(200), RecState::Applied);
    let r2 = with("old", 6, at(199), RecState::Pending);
    let r3 = with("old", 8, at(198), RecState::Pending);
    let waiting = with("waiting", 5, at(250), RecState::Approved);
    for r in [&r0, &r1, &r2, &r3, &waiting] {
        assert!(s.create(r, "prescale").await.unwrap());
    }
    // r3 supersedes r2, then expires undecided: the newest of `old` lapsed.
    assert!(s.expire(at(197)).await.unwrap() >= 1);
    assert_eq!(s.get(&r2.id).await.unwrap().state, RecState::Superseded);
    assert_eq!(s.get(&r3.id).await.unwrap().state, RecState::Expired);
    let lapsed = s.lapsed().await.unwrap();
    let applied = s.all_last_applied().await.unwrap();
    assert_eq!(applied["shop/old"], 4);
    let audit_before = s.audit_log(None, 100_000, 0).await.unwrap().len();
    // A batch of one first (the loop prunes a long history over several loops), then the rest.
    assert_eq!(s.prune(at(90), now, 1).await.unwrap(), (1, 1));
    let (recs, entries) = s.prune(at(90), now, 1000).await.unwrap();
    let (recs, entries) = (recs + 1, entries + 1);
    assert_eq!(recs, 2, "r0 (an older applied) and r2 (superseded)");
    assert!(entries >= 4, "the old creations' audit entries: {entries}");
    for gone in [&r0, &r2] {
        assert!(matches!(s.get(&gone.id).await, Err(StoreError::NotFound)));
    }
    assert_eq!(s.get(&r1.id).await.unwrap().state, RecState::Applied);
    assert_eq!(s.get(&r3.id).await.unwrap().state, RecState::Expired);
    assert_eq!(s.get(&waiting.id).await.unwrap().state, RecState::Approved);
    // Every recommendation made in this suite (at `now`) is untouched.
    assert_eq!(s.get(&b.id).await.unwrap().state, RecState::Applied);
    assert_eq!(s.lapsed().await.unwrap(), lapsed);
    assert_eq!(s.all_last_applied().await.unwrap(), applied);
    let log = s.audit_log(None, 100_000, 0).await.unwrap();
    assert_eq!(log.len() as u64, audit_before as u64 - entries + 2);
    assert!(log.iter().all(|e| e.at >= at(90)));
    assert_eq!(log[0].action, "prune");
    assert_eq!(
        s.prune(at(90), now, 1000).await.unwrap(),
        (0, 0),
        "nothing left to prune"
    );

    // Reopen (migrations are idempotent); everything is still there.
    drop(s);
    let s = Store::open(url).await.unwrap();
    assert_eq!(s.get(&b.id).await.unwrap().state, RecState::Applied);
    assert_eq!(s.controls("shop", "web").await.unwrap(), paused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite() {
    let dir = tempfile::tempdir().unwrap();
    suite(&Store::sqlite_url(dir.path())).await;
    assert!(dir.path().join("prescale.db").exists());
    heads(&Store::sqlite_url(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    let pg = common::Postgres::start();
    suite(&pg.url).await;
    heads(&pg.url).await;
}
