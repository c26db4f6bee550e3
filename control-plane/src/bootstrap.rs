//! First start: the macaroon root key, the default organisation and project
//! (granted the organisation's `default` pool), the platform administrator's
//! token and an organisation join token into the `default` pool.
//!
//! Runs before any watcher exists (or offline, for `admin-token`): its
//! writes have no consequences to perform, so their events are not told.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use tether_auth::{JoinSecret, KeyRing, Macaroon, random_bytes};
use tether_store::{Store, TokenRecord};
use tether_types::{DEFAULT_POOL, JoinToken, JoinTokenId, Labels, OrgId, ProjectId, Role, TokenId};

use crate::clock::now_ms;

/// The bootstrap join token is for getting started; create scoped ones for fleets.
const BOOTSTRAP_JOIN_TTL: Duration = Duration::from_secs(7 * 86400);
const BOOTSTRAP_JOIN_USES: u32 = 1000;

pub struct Boot {
    pub keys: KeyRing,
    pub org_id: OrgId,
    pub project_id: ProjectId,
    /// True on the very first start: the tokens below were just made.
    pub created: bool,
    pub admin_token: Option<String>,
    pub join_token: Option<String>,
}

pub async fn run(store: &Store, data_dir: &Path) -> anyhow::Result<Boot> {
    let now = now_ms();
    let keys = match store.root_keys().await? {
        k if !k.is_empty() => k,
        _ => store.root_key_first(&random_bytes::<32>(), now).await?,
    };
    let keys = crate::auth::key_ring(&keys).context("the database holds no root key")?;
    let b = store.bootstrap(OrgId::from_random(random_bytes()), ProjectId::from_random(random_bytes()), now).await?;
    let mut boot = Boot {
        keys,
        org_id: b.org_id,
        project_id: b.project_id,
        created: b.created,
        admin_token: None,
        join_token: None,
    };
    if !b.created {
        if !data_dir.join("admin.token").exists() {
            tracing::info!(
                "the database was bootstrapped earlier; its admin token is in the data dir of that first start"
            );
        }
        return Ok(boot);
    }

    let admin = mint_admin(store, &boot, None, "bootstrap admin token").await?;

    let jt_id = JoinTokenId::from_random(random_bytes());
    let secret = JoinSecret::generate(&jt_id);
    let _committed = store
        .join_token_create(
            &JoinToken {
                id: jt_id,
                org_id: boot.org_id.clone(),
                project_id: None,
                pool: DEFAULT_POOL.into(),
                description: "bootstrap join token".into(),
                labels: Labels::new(),
                max_uses: BOOTSTRAP_JOIN_USES,
                uses: 0,
                created_at: now,
                expires_at: now + BOOTSTRAP_JOIN_TTL.as_millis() as i64,
                revoked_at: None,
            },
            &secret.secret_hash,
        )
        .await?;

    write_secret(&data_dir.join("admin.token"), &admin)?;
    write_secret(&data_dir.join("join.token"), &secret.token)?;
    boot.admin_token = Some(admin);
    boot.join_token = Some(secret.token);
    Ok(boot)
}

/// Mints a platform administrator's token (every organisation; acting on
/// the bootstrap project unless a call names another) and records it;
/// returns the encoded token.
pub async fn mint_admin(
    store: &Store,
    boot: &Boot,
    expires_at: Option<i64>,
    description: &str,
) -> anyhow::Result<String> {
    let record = TokenRecord {
        id: TokenId::from_random(random_bytes()),
        org_id: None,
        project_id: None,
        role: Role::Admin,
        org_role: Some(tether_types::OrgRole::Admin),
        description: description.into(),
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
    };
    let admin = Macaroon::mint(boot.keys.current(), record.id.clone(), &crate::auth::caveats_for(&record));
    let _committed = store.token_record(&record).await?;
    Ok(admin.encode())
}

/// Prints the first-start credentials where an operator will see them.
pub fn announce(boot: &Boot, data_dir: &Path, grpc: std::net::SocketAddr) {
    let (Some(admin), Some(join)) = (&boot.admin_token, &boot.join_token) else { return };
    println!(
        "\nTether is bootstrapped (organisation {}, project {}).\n\n\
         Platform administrator token (also in {}):\n  {admin}\n\n\
         Agent join token for the default pool, {} uses, expires in 7 days (also in {}):\n  {join}\n\n\
         Start an agent:\n  tether-agent --control-plane http://{grpc} --join-token {join}\n",
        boot.org_id,
        boot.project_id,
        data_dir.join("admin.token").display(),
        BOOTSTRAP_JOIN_USES,
        data_dir.join("join.token").display(),
    );
}

fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    Ok(())
}
