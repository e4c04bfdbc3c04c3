//! The store suite: every case below runs, unchanged, against SQLite, a
//! standalone Redis and a 3-master Redis Cluster (`suite!` expands each case
//! into one test per backend).

use std::sync::Arc;
use std::time::Duration;

use inkan::config::{StoreBackend, StoreConfig};
use inkan::store::token::{self, Minted};
use inkan::store::touch::Toucher;
use inkan::store::{
    self, CodeOutcome, Grant, PendingCode, RotateOutcome, Rotation, SharedStore, TokenHash,
    TokenKind, TokenPair, sqlite::SqliteStore, unix_now,
};
use tempfile::TempDir;

use crate::support::redis as servers;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Redis,
    Cluster,
}

struct Fx {
    store: SharedStore,
    _dir: Option<TempDir>,
}

impl Backend {
    async fn open(self, name: &str) -> Fx {
        let mut config = StoreConfig {
            prefix: servers::unique_prefix(name),
            ..StoreConfig::default()
        };
        let mut dir = None;
        match self {
            Backend::Sqlite => {
                let d = TempDir::new().unwrap();
                config.path = d.path().join("inkan.db");
                dir = Some(d);
            }
            Backend::Redis => {
                config.backend = StoreBackend::Redis;
                config.url = Some(servers::standalone().await);
            }
            Backend::Cluster => {
                config.backend = StoreBackend::Redis;
                config.nodes = servers::cluster().await;
            }
        }
        Fx {
            store: store::connect(&config).await.expect("connect store"),
            _dir: dir,
        }
    }
}

macro_rules! for_backend {
    ($module:ident, $backend:expr; $($case:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let fx = $backend.open(stringify!($case)).await;
                    super::cases::$case(&fx.store).await;
                }
            )*
        }
    };
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        for_backend!(sqlite, super::Backend::Sqlite; $($case),*);
        for_backend!(redis, super::Backend::Redis; $($case),*);
        for_backend!(cluster, super::Backend::Cluster; $($case),*);
    };
}

suite!(
    clients_are_stored_extended_and_expire,
    codes_are_one_time,
    codes_expire,
    grants_are_created_once_and_looked_up_by_access_token,
    rotation_outcomes,
    previous_refresh_token_after_grace_revokes_the_grant,
    revocation_by_token_grant_user_session_and_client,
    user_revocation_kills_a_pending_code,
    user_grants_are_listed_newest_first,
    grant_use_is_recorded_in_batches,
    meta_values,
    fifty_consumers_of_one_code_get_one_fresh,
    concurrent_refreshes_share_one_successor,
    revocation_racing_issuance_leaves_nothing_valid,
);

/// Test data: a grant of one user's consent for one client.
pub fn grant(user: &str, session: &str, client: &str, created_at: i64) -> Grant {
    Grant {
        grant_id: token::new_grant_id(),
        user_id: user.into(),
        email: Some(format!("{user}@example.com")),
        session_id: session.into(),
        client_id: client.into(),
        scopes: vec!["notes:read".into(), "notes:write".into()],
        services: vec!["notes".into()],
        resource: "https://mcp.example.com/mcp/notes".into(),
        created_at,
        last_used: None,
        session_exp: unix_now() + 7200,
        expires_at: unix_now() + 3600,
    }
}

/// Freshly minted tokens of a grant, with their hashes as the store sees them.
pub struct Issued {
    pub access: Minted,
    pub refresh: Minted,
    pub pair: TokenPair,
}

pub fn issue(grant: &Grant) -> Issued {
    let access = token::mint(TokenKind::Access, &grant.grant_id);
    let refresh = token::mint(TokenKind::Refresh, &grant.grant_id);
    let pair = TokenPair {
        access: access.hash,
        access_expires_at: unix_now() + 600,
        refresh: refresh.hash,
        refresh_expires_at: grant.expires_at,
    };
    Issued {
        access,
        refresh,
        pair,
    }
}

fn rotation(
    refresh: &str,
    grant_id: &str,
    now: i64,
    grace_secs: i64,
) -> (Rotation, Minted, Minted) {
    let (access, next) = token::successor(refresh, grant_id);
    let rotation = Rotation {
        presented: TokenHash::of(refresh),
        successor: TokenPair {
            access: access.hash,
            access_expires_at: now + 600,
            refresh: next.hash,
            refresh_expires_at: now + 3000,
        },
        now,
        grace_secs,
    };
    (rotation, access, next)
}

fn pending(grant: &Grant) -> (PendingCode, Minted) {
    let code = token::mint(TokenKind::Code, &grant.grant_id);
    let p = PendingCode {
        grant: grant.clone(),
        redirect_uri: "http://127.0.0.1:33418/callback".into(),
        code_challenge: "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM".into(),
        expires_at: unix_now() + 60,
    };
    (p, code)
}

async fn create(store: &SharedStore, grant: &Grant) -> Issued {
    let issued = issue(grant);
    assert!(store.create_grant(grant, &issued.pair).await.unwrap());
    issued
}

async fn access_works(store: &SharedStore, grant_id: &str, access: &Minted) -> bool {
    store
        .lookup_access(grant_id, &access.hash)
        .await
        .unwrap()
        .is_some()
}

mod cases {
    use super::*;

    pub async fn clients_are_stored_extended_and_expire(store: &SharedStore) {
        let now = unix_now();
        let secret = token::mint_client_secret();
        let client = store::Client {
            client_id: format!("c-{}", token::new_grant_id()),
            client_name: Some("Claude Code".into()),
            client_uri: None,
            logo_uri: None,
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            auth_method: store::ClientAuthMethod::ClientSecretPost,
            secret_hash: Some(secret.hash),
            source: store::ClientSource::Registered,
            created_at: now,
            expires_at: Some(now + 100),
        };
        store.put_client(&client).await.unwrap();
        assert_eq!(
            store.get_client(&client.client_id).await.unwrap(),
            Some(client.clone())
        );
        store
            .extend_client(&client.client_id, now + 5000)
            .await
            .unwrap();
        let got = store.get_client(&client.client_id).await.unwrap().unwrap();
        assert_eq!(got.expires_at, Some(now + 5000));
        assert_eq!(got.secret_hash, Some(secret.hash));

        let permanent = store::Client {
            client_id: "https://app.example.com/client.json".into(),
            source: store::ClientSource::MetadataDocument,
            secret_hash: None,
            auth_method: store::ClientAuthMethod::None,
            expires_at: None,
            ..client.clone()
        };
        store.put_client(&permanent).await.unwrap();
        store
            .extend_client(&permanent.client_id, now + 10)
            .await
            .unwrap();
        assert_eq!(
            store
                .get_client(&permanent.client_id)
                .await
                .unwrap()
                .unwrap()
                .expires_at,
            None,
            "a client without expiry must not gain one"
        );

        let expired = store::Client {
            client_id: format!("c-{}", token::new_grant_id()),
            expires_at: Some(now - 1),
            ..client
        };
        store.put_client(&expired).await.unwrap();
        assert_eq!(store.get_client(&expired.client_id).await.unwrap(), None);
        assert_eq!(store.get_client("nobody").await.unwrap(), None);
    }

    pub async fn codes_are_one_time(store: &SharedStore) {
        let g = grant("u1", "s1", "c1", unix_now());
        let (p, code) = pending(&g);
        store.put_code(&code.hash, &p).await.unwrap();
        let now = unix_now();
        let wrong = token::mint(TokenKind::Code, &g.grant_id);
        assert_eq!(
            store
                .consume_code(&g.grant_id, &wrong.hash, now)
                .await
                .unwrap(),
            CodeOutcome::Unknown
        );
        assert_eq!(
            store
                .consume_code(&g.grant_id, &code.hash, now)
                .await
                .unwrap(),
            CodeOutcome::Fresh(Box::new(p))
        );
        assert_eq!(
            store
                .consume_code(&g.grant_id, &code.hash, now)
                .await
                .unwrap(),
            CodeOutcome::Replayed {
                grant_id: g.grant_id.clone()
            }
        );
        let other = token::new_grant_id();
        let stray = token::mint(TokenKind::Code, &other);
        assert_eq!(
            store.consume_code(&other, &stray.hash, now).await.unwrap(),
            CodeOutcome::Unknown
        );
    }

    pub async fn codes_expire(store: &SharedStore) {
        let g = grant("u1", "s1", "c1", unix_now());
        let (p, code) = pending(&g);
        store.put_code(&code.hash, &p).await.unwrap();
        assert_eq!(
            store
                .consume_code(&g.grant_id, &code.hash, p.expires_at)
                .await
                .unwrap(),
            CodeOutcome::Unknown
        );
    }

    pub async fn grants_are_created_once_and_looked_up_by_access_token(store: &SharedStore) {
        let g = grant("u1", "s1", "c1", unix_now());
        let t = create(store, &g).await;
        assert!(
            !store.create_grant(&g, &issue(&g).pair).await.unwrap(),
            "a grant id is created once"
        );
        let view = store
            .lookup_access(&g.grant_id, &t.access.hash)
            .await
            .unwrap()
            .expect("current access token");
        assert_eq!(view.grant, g);
        assert_eq!(view.access_expires_at, t.pair.access_expires_at);
        assert_eq!(
            store
                .lookup_access(&g.grant_id, &t.refresh.hash)
                .await
                .unwrap(),
            None,
            "a refresh token is not an access token"
        );
        assert_eq!(
            store
                .lookup_access(&token::new_grant_id(), &t.access.hash)
                .await
                .unwrap(),
            None
        );
        assert_eq!(store.get_grant(&g.grant_id).await.unwrap(), Some(g));
    }

    pub async fn rotation_outcomes(store: &SharedStore) {
        let now = unix_now();
        let g = grant("u1", "s1", "c1", now);
        let t = create(store, &g).await;
        let (r1, a1, rt1) = rotation(&t.refresh.token, &g.grant_id, now, 30);
        let RotateOutcome::Rotated { grant: rotated } =
            store.rotate_refresh(&g.grant_id, &r1).await.unwrap()
        else {
            panic!("current refresh token must rotate");
        };
        assert_eq!(rotated.grant_id, g.grant_id);
        assert_eq!(rotated.expires_at, r1.successor.refresh_expires_at);
        assert!(access_works(store, &g.grant_id, &a1).await);
        assert!(!access_works(store, &g.grant_id, &t.access).await);

        let (again, _, _) = rotation(&t.refresh.token, &g.grant_id, now + 5, 30);
        assert_eq!(
            again.successor.refresh, r1.successor.refresh,
            "successors are deterministic"
        );
        match store.rotate_refresh(&g.grant_id, &again).await.unwrap() {
            RotateOutcome::Repeated {
                grant,
                access_expires_at,
                refresh_expires_at,
            } => {
                assert_eq!(grant.grant_id, g.grant_id);
                assert_eq!(access_expires_at, r1.successor.access_expires_at);
                assert_eq!(refresh_expires_at, r1.successor.refresh_expires_at);
            }
            other => panic!("retry inside the grace window: {other:?}"),
        }

        let (r2, a2, _) = rotation(&rt1.token, &g.grant_id, now + 10, 30);
        assert!(matches!(
            store.rotate_refresh(&g.grant_id, &r2).await.unwrap(),
            RotateOutcome::Rotated { .. }
        ));
        assert!(access_works(store, &g.grant_id, &a2).await);

        // The first token is two rotations old: reuse, the grant dies.
        let (stale, _, _) = rotation(&t.refresh.token, &g.grant_id, now + 11, 30);
        match store.rotate_refresh(&g.grant_id, &stale).await.unwrap() {
            RotateOutcome::Reused { revoked } => {
                assert_eq!(revoked.grants, vec![g.grant_id.clone()]);
                assert_eq!(revoked.tokens, 2);
            }
            other => panic!("stale refresh token: {other:?}"),
        }
        assert!(!access_works(store, &g.grant_id, &a2).await);
        assert_eq!(store.get_grant(&g.grant_id).await.unwrap(), None);
        assert_eq!(
            store.rotate_refresh(&g.grant_id, &r2).await.unwrap(),
            RotateOutcome::Unknown
        );

        let h = grant("u1", "s1", "c1", now);
        let th = create(store, &h).await;
        let (late, _, _) = rotation(&th.refresh.token, &h.grant_id, h.expires_at, 30);
        assert_eq!(
            store.rotate_refresh(&h.grant_id, &late).await.unwrap(),
            RotateOutcome::Expired
        );
        let nobody = token::new_grant_id();
        let stray = token::mint(TokenKind::Refresh, &nobody);
        let (unknown, _, _) = rotation(&stray.token, &nobody, now, 30);
        assert_eq!(
            store.rotate_refresh(&nobody, &unknown).await.unwrap(),
            RotateOutcome::Unknown
        );
    }

    pub async fn previous_refresh_token_after_grace_revokes_the_grant(store: &SharedStore) {
        let now = unix_now();
        let g = grant("u1", "s1", "c1", now);
        let t = create(store, &g).await;
        let (r1, a1, _) = rotation(&t.refresh.token, &g.grant_id, now, 2);
        assert!(matches!(
            store.rotate_refresh(&g.grant_id, &r1).await.unwrap(),
            RotateOutcome::Rotated { .. }
        ));
        let (inside, _, _) = rotation(&t.refresh.token, &g.grant_id, now + 2, 2);
        assert!(matches!(
            store.rotate_refresh(&g.grant_id, &inside).await.unwrap(),
            RotateOutcome::Repeated { .. }
        ));
        let (after, _, _) = rotation(&t.refresh.token, &g.grant_id, now + 3, 2);
        assert!(matches!(
            store.rotate_refresh(&g.grant_id, &after).await.unwrap(),
            RotateOutcome::Reused { .. }
        ));
        assert!(!access_works(store, &g.grant_id, &a1).await);
        assert!(
            store.list_user_grants("u1").await.unwrap().is_empty(),
            "the reused grant is gone from the user's list"
        );
    }

    pub async fn revocation_by_token_grant_user_session_and_client(store: &SharedStore) {
        let now = unix_now();
        let single = grant("solo", "solo-s", "c-solo", now);
        let ts = create(store, &single).await;
        assert!(
            store
                .revoke_access_token(&single.grant_id, &ts.access.hash)
                .await
                .unwrap()
        );
        assert!(
            !store
                .revoke_access_token(&single.grant_id, &ts.access.hash)
                .await
                .unwrap()
        );
        assert!(!access_works(store, &single.grant_id, &ts.access).await);
        let r = store.revoke_grant(&single.grant_id).await.unwrap();
        assert_eq!((r.grants, r.tokens), (vec![single.grant_id.clone()], 1));
        let r = store.revoke_grant(&single.grant_id).await.unwrap();
        assert_eq!((r.grants.len(), r.tokens), (0, 0));

        let a1 = grant("alice", "sa1", "c-a", now);
        let a2 = grant("alice", "sa1", "c-b", now);
        let a3 = grant("alice", "sa2", "c-a", now);
        let b1 = grant("bob", "sb1", "c-a", now);
        let b2 = grant("bob", "sb2", "c-b", now);
        let mut tokens = Vec::new();
        for g in [&a1, &a2, &a3, &b1, &b2] {
            tokens.push(create(store, g).await);
        }

        let mut r = store.revoke_session("sa1").await.unwrap();
        r.grants.sort();
        let mut want = vec![a1.grant_id.clone(), a2.grant_id.clone()];
        want.sort();
        assert_eq!((r.grants, r.tokens), (want, 4));
        assert!(!access_works(store, &a1.grant_id, &tokens[0].access).await);
        assert!(access_works(store, &a3.grant_id, &tokens[2].access).await);

        let r = store.revoke_user("alice").await.unwrap();
        assert_eq!((r.grants, r.tokens), (vec![a3.grant_id.clone()], 2));
        assert!(!access_works(store, &a3.grant_id, &tokens[2].access).await);
        assert!(access_works(store, &b1.grant_id, &tokens[3].access).await);

        let r = store.revoke_client("c-a").await.unwrap();
        assert_eq!((r.grants, r.tokens), (vec![b1.grant_id.clone()], 2));
        assert!(!access_works(store, &b1.grant_id, &tokens[3].access).await);
        assert!(access_works(store, &b2.grant_id, &tokens[4].access).await);

        let r = store.revoke_user("alice").await.unwrap();
        assert_eq!((r.grants.len(), r.tokens), (0, 0));
        assert_eq!(store.list_user_grants("bob").await.unwrap(), vec![b2]);
    }

    pub async fn user_revocation_kills_a_pending_code(store: &SharedStore) {
        let g = grant("carol", "sc", "c1", unix_now());
        let (p, code) = pending(&g);
        store.put_code(&code.hash, &p).await.unwrap();
        let r = store.revoke_user("carol").await.unwrap();
        assert_eq!((r.grants, r.tokens), (vec![g.grant_id.clone()], 1));
        assert_eq!(
            store
                .consume_code(&g.grant_id, &code.hash, unix_now())
                .await
                .unwrap(),
            CodeOutcome::Unknown
        );
        assert!(
            !store.create_grant(&g, &issue(&g).pair).await.unwrap(),
            "a revoked grant id cannot be created"
        );

        // Exchanged before the revocation, created after it.
        let h = grant("carol", "sc", "c1", unix_now());
        let (p, code) = pending(&h);
        store.put_code(&code.hash, &p).await.unwrap();
        assert!(matches!(
            store
                .consume_code(&h.grant_id, &code.hash, unix_now())
                .await
                .unwrap(),
            CodeOutcome::Fresh(_)
        ));
        store.revoke_user("carol").await.unwrap();
        assert!(!store.create_grant(&h, &issue(&h).pair).await.unwrap());
        assert_eq!(store.get_grant(&h.grant_id).await.unwrap(), None);
    }

    pub async fn user_grants_are_listed_newest_first(store: &SharedStore) {
        let now = unix_now();
        let old = grant("dave", "sd1", "c1", now - 30);
        let mid = grant("dave", "sd2", "c2", now - 20);
        let new = grant("dave", "sd1", "c3", now - 10);
        for g in [&mid, &new, &old] {
            create(store, g).await;
        }
        create(store, &grant("erin", "se", "c1", now)).await;
        // A code never exchanged is not a grant.
        let (p, code) = pending(&grant("dave", "sd1", "c1", now));
        store.put_code(&code.hash, &p).await.unwrap();
        let listed = store.list_user_grants("dave").await.unwrap();
        assert_eq!(listed, vec![new, mid, old]);
        assert!(store.list_user_grants("nobody").await.unwrap().is_empty());
    }

    pub async fn grant_use_is_recorded_in_batches(store: &SharedStore) {
        let now = unix_now();
        let g = grant("fay", "sf", "c1", now);
        let h = grant("fay", "sf", "c1", now);
        create(store, &g).await;
        create(store, &h).await;
        store
            .touch_grants(&[(g.grant_id.clone(), now + 1)])
            .await
            .unwrap();
        assert_eq!(
            store
                .get_grant(&g.grant_id)
                .await
                .unwrap()
                .unwrap()
                .last_used,
            Some(now + 1)
        );

        let toucher = Toucher::spawn(store.clone(), Duration::from_secs(3600));
        let ghost = token::new_grant_id();
        for (id, at) in [
            (&g.grant_id, now + 5),
            (&h.grant_id, now + 3),
            (&g.grant_id, now + 9),
            (&g.grant_id, now + 7),
            (&ghost, now),
        ] {
            toucher.touch(id, at);
        }
        assert_eq!(toucher.pending(), 3, "uses coalesce per grant");
        toucher.flush().await.unwrap();
        assert_eq!(toucher.pending(), 0);
        let last =
            |id: String| async move { store.get_grant(&id).await.unwrap().unwrap().last_used };
        assert_eq!(last(g.grant_id.clone()).await, Some(now + 9));
        assert_eq!(last(h.grant_id.clone()).await, Some(now + 3));
        assert_eq!(
            store.get_grant(&ghost).await.unwrap(),
            None,
            "touching creates nothing"
        );
    }

    pub async fn meta_values(store: &SharedStore) {
        assert_eq!(store.get_meta("signing-key").await.unwrap(), None);
        assert_eq!(
            store
                .put_meta_if_absent("signing-key", b"first")
                .await
                .unwrap(),
            b"first"
        );
        assert_eq!(
            store
                .put_meta_if_absent("signing-key", b"second")
                .await
                .unwrap(),
            b"first"
        );
        store.set_meta("signing-key", b"third").await.unwrap();
        assert_eq!(
            store.get_meta("signing-key").await.unwrap(),
            Some(b"third".to_vec())
        );
    }

    pub async fn fifty_consumers_of_one_code_get_one_fresh(store: &SharedStore) {
        let g = grant("gus", "sg", "c1", unix_now());
        let (p, code) = pending(&g);
        store.put_code(&code.hash, &p).await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (store, id) = (store.clone(), g.grant_id.clone());
                tokio::spawn(async move { store.consume_code(&id, &code.hash, unix_now()).await })
            })
            .collect();
        let (mut fresh, mut replayed) = (0, 0);
        for t in tasks {
            match t.await.unwrap().unwrap() {
                CodeOutcome::Fresh(got) => {
                    assert_eq!(*got, p);
                    fresh += 1;
                }
                CodeOutcome::Replayed { grant_id } => {
                    assert_eq!(grant_id, g.grant_id);
                    replayed += 1;
                }
                CodeOutcome::Unknown => panic!("a live code is never unknown"),
            }
        }
        assert_eq!((fresh, replayed), (1, 49));
    }

    pub async fn concurrent_refreshes_share_one_successor(store: &SharedStore) {
        let now = unix_now();
        let g = grant("hal", "sh", "c1", now);
        let t = create(store, &g).await;
        let (r, access, _) = rotation(&t.refresh.token, &g.grant_id, now, 30);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (store, id) = (store.clone(), g.grant_id.clone());
                tokio::spawn(async move { store.rotate_refresh(&id, &r).await })
            })
            .collect();
        let mut rotated = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                RotateOutcome::Rotated { .. } => rotated += 1,
                RotateOutcome::Repeated {
                    access_expires_at, ..
                } => assert_eq!(access_expires_at, r.successor.access_expires_at),
                other => panic!("inside the grace window: {other:?}"),
            }
        }
        assert_eq!(rotated, 1);
        assert!(access_works(store, &g.grant_id, &access).await);
    }

    pub async fn revocation_racing_issuance_leaves_nothing_valid(store: &SharedStore) {
        for i in 0..30 {
            let user = format!("racer-{i}");
            let g = grant(&user, "sr", "c1", unix_now());
            let (p, code) = pending(&g);
            store.put_code(&code.hash, &p).await.unwrap();
            let issued = issue(&g);
            let exchange = {
                let (store, g, pair) = (store.clone(), g.clone(), issued.pair);
                tokio::spawn(async move {
                    match store
                        .consume_code(&g.grant_id, &code.hash, unix_now())
                        .await?
                    {
                        CodeOutcome::Fresh(_) => store.create_grant(&g, &pair).await,
                        _ => Ok(false),
                    }
                })
            };
            let revoke = {
                let (store, user) = (store.clone(), user.clone());
                tokio::spawn(async move { store.revoke_user(&user).await })
            };
            let created = exchange.await.unwrap().unwrap();
            let revoked = revoke.await.unwrap().unwrap();
            assert!(
                !created || revoked.grants.contains(&g.grant_id),
                "iteration {i}: a grant created before the revocation must be in its count"
            );
            assert!(
                !access_works(store, &g.grant_id, &issued.access).await,
                "iteration {i}: a token of a revoked grant validates"
            );
            let (r, _, _) = rotation(&issued.refresh.token, &g.grant_id, unix_now(), 30);
            assert_eq!(
                store.rotate_refresh(&g.grant_id, &r).await.unwrap(),
                RotateOutcome::Unknown,
                "iteration {i}"
            );
            assert!(store.list_user_grants(&user).await.unwrap().is_empty());
        }
    }
}

#[tokio::test]
async fn sqlite_sweeps_expired_rows_and_survives_a_restart() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("inkan.db");
    let now = unix_now();
    let keep = grant("ivy", "si", "c1", now);
    let mut gone = grant("ivy", "si", "c1", now);
    gone.expires_at = now + 100;
    let kept = {
        let store: SharedStore = Arc::new(SqliteStore::open(&path).await.unwrap());
        create(&store, &gone).await;
        let kept = create(&store, &keep).await;
        let (p, code) = pending(&grant("ivy", "si", "c1", now));
        store.put_code(&code.hash, &p).await.unwrap();
        store.set_meta("k", b"v").await.unwrap();
        kept
    };
    let store: SharedStore = Arc::new(SqliteStore::open(&path).await.unwrap());
    assert!(access_works(&store, &keep.grant_id, &kept.access).await);
    assert_eq!(store.get_meta("k").await.unwrap(), Some(b"v".to_vec()));
    assert_eq!(
        store.sweep(now + 200).await.unwrap(),
        2,
        "one grant, one code"
    );
    assert_eq!(store.get_grant(&gone.grant_id).await.unwrap(), None);
    assert!(access_works(&store, &keep.grant_id, &kept.access).await);
}

#[tokio::test]
async fn redis_down_is_a_store_error_and_a_restart_keeps_the_grants() {
    let server = tokio::task::spawn_blocking(servers::RedisServer::start_new)
        .await
        .unwrap();
    let config = StoreConfig {
        backend: StoreBackend::Redis,
        url: Some(server.url()),
        prefix: servers::unique_prefix("restart"),
        ..StoreConfig::default()
    };
    let store = store::connect(&config).await.unwrap();
    let g = grant("jo", "sj", "c1", unix_now());
    let t = create(&store, &g).await;
    let server = Arc::new(server);
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.stop()).await.unwrap();
    let err = store.lookup_access(&g.grant_id, &t.access.hash).await;
    assert!(
        err.is_err(),
        "a stopped Redis must be an error, got {err:?}"
    );
    assert!(store.ping().await.is_err());
    let s = server.clone();
    tokio::task::spawn_blocking(move || s.start())
        .await
        .unwrap();
    let mut answered = None;
    for _ in 0..50 {
        if let Ok(v) = store.lookup_access(&g.grant_id, &t.access.hash).await {
            answered = Some(v);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(answered.flatten().map(|v| v.grant), Some(g));
}
