//! The writer lease on a real WebDAV server (Apache mod_dav, started by
//! `strata-testkit`): where the store proves exclusive create, writers
//! racing for the lease get exactly one winner without any settle delay;
//! where the server ignores `If-None-Match` (Apache behind a proxy that
//! hides the header), the store proves nothing and the lease falls back to
//! settling and reading back.

use std::time::Duration;

use strata_core::vault::{CreateOptions, OpenOptions};
use strata_core::{LeaseOptions, Vault, VaultError};
use strata_crypto::KdfParams;
use strata_store::{open_url, DynStore};
use strata_testkit::WebDavServer;

const PW: &[u8] = b"webdav lease test password";

/// A settle delay no test waits out: a lease taken under it was taken
/// without settling.
const NEVER: Duration = Duration::from_secs(3600);

struct Env {
    url: String,
    state: tempfile::TempDir,
    _dir: tempfile::TempDir,
}

impl Env {
    /// A new vault in folder `sub` of `server`, reached directly or through
    /// `proxy` (`http://127.0.0.1:PORT`).
    async fn new(server: &WebDavServer, sub: &str, proxy: Option<&str>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("dav-password");
        std::fs::write(&pw, &server.password).unwrap();
        let base = match proxy {
            Some(p) => format!("{p}/dav/"),
            None => server.url.clone(),
        };
        let url = format!(
            "webdav+{base}{sub}/?user={}&password-file={}",
            server.user,
            pw.display()
        );
        let e = Env {
            url,
            state: tempfile::tempdir().unwrap(),
            _dir: dir,
        };
        let v = Vault::create(
            e.store(),
            PW,
            CreateOptions {
                kdf: KdfParams::insecure_for_tests(),
                chunk_size: 64 << 10,
            },
            e.opts(None),
        )
        .await
        .unwrap();
        drop(v);
        e
    }

    fn store(&self) -> DynStore {
        open_url(&self.url).unwrap().0
    }

    fn opts(&self, lease: Option<LeaseOptions>) -> OpenOptions {
        OpenOptions {
            state_dir: Some(self.state.path().to_path_buf()),
            lease,
            ..Default::default()
        }
    }

    async fn open(&self, lease: LeaseOptions) -> Result<Vault, VaultError> {
        Vault::open(self.store(), PW, self.opts(Some(lease))).await
    }

    async fn conditional_create(&self) -> bool {
        let s = self.store();
        s.prepare().await.unwrap();
        s.capabilities().conditional_create
    }

    async fn lease_objects(&self) -> usize {
        let list = self.store().list("lease/").await.unwrap();
        list.iter()
            .filter(|o| strata_core::lease::parse_lease_key(&o.key).is_some())
            .count()
    }
}

fn lopts(label: &str, settle: Duration) -> LeaseOptions {
    LeaseOptions {
        ttl: Duration::from_secs(30),
        clock_margin: Duration::ZERO,
        settle,
        ..LeaseOptions::new(label)
    }
}

/// Two writers open at once, `rounds` times: exactly one gets the lease and
/// the other is refused naming it.
async fn race(e: &Env, settle: Duration, rounds: usize) {
    for round in 0..rounds {
        let both = async {
            tokio::join!(
                e.open(lopts("racer X", settle)),
                e.open(lopts("racer Y", settle))
            )
        };
        let (x, y) = tokio::time::timeout(Duration::from_secs(120), both)
            .await
            .expect("the writers waited out the settle delay");
        let (winner, loser) = match (x, y) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            (Ok(_), Ok(_)) => panic!("round {round}: both writers got the lease"),
            (Err(a), Err(b)) => panic!("round {round}: nobody won: {a} / {b}"),
        };
        assert!(
            matches!(loser, VaultError::Locked { .. }),
            "round {round}: {loser}"
        );
        assert!(loser.to_string().contains("racer"), "{loser}");
        assert_eq!(e.lease_objects().await, 1, "round {round}");
        winner.release_lease().await.unwrap();
    }
}

/// Apache: the probe proves exclusive create, so the lease trusts it — the
/// writers race under a settle delay of an hour and are done at once.
#[tokio::test(flavor = "multi_thread")]
async fn apache_lease_race_has_one_winner_without_settling() {
    let server = WebDavServer::start_apache().unwrap();
    let e = Env::new(&server, "vault", None).await;
    assert!(e.conditional_create().await);
    race(&e, NEVER, 4).await;
}

/// Apache behind a proxy that hides `If-None-Match`: the probe's second
/// create overwrites, so nothing is proven and the lease settles: a writer
/// under a settle delay of an hour is still waiting, and with a short one
/// the read-back still leaves exactly one winner.
#[tokio::test(flavor = "multi_thread")]
async fn lease_settles_where_the_server_ignores_if_none_match() {
    let server = WebDavServer::start_apache().unwrap();
    let target = server
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/dav/")
        .to_owned();
    let proxy = strata_testkit::ignore_if_none_match_proxy(&target).unwrap();
    let e = Env::new(&server, "vault", Some(&proxy)).await;
    assert!(!e.conditional_create().await);
    let waiting = tokio::time::timeout(Duration::from_secs(3), e.open(lopts("settler", NEVER)));
    assert!(
        waiting.await.is_err(),
        "the lease was taken without settling on a store without proven conditional create"
    );
    race(&e, Duration::from_millis(300), 2).await;
}
