//! The harness of every service's API test binary (feature `testing`): each
//! test runs once on SQLite and once on PostgreSQL, on its own runtime.
//!
//! Without a reachable PostgreSQL the PostgreSQL runs are reported as
//! *ignored*, with the reason printed; under CI (`CI` set) they run, and
//! fail. Scratch databases are named `<prefix>_<random>`. A test that
//! passes leaves nothing behind: the databases and SQLite directories it
//! made are removed. Those of a failed test stay for inspection; its
//! databases are dropped when the binary next starts.

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;

use libtest_mimic::{Arguments, Trial};

use crate::storage::testing;

/// A test: given the engine, a future that succeeds or says why not.
pub type TestFn = fn(Engine) -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }

    /// A fresh database for one test: a SQLite file in `dir`, or a scratch
    /// PostgreSQL database named after `prefix`. Removed, with `dir`, when
    /// the test passes.
    pub async fn database_url(self, prefix: &str, dir: &std::path::Path) -> anyhow::Result<String> {
        let _ = SCRATCH.try_with(|scratch| scratch.borrow_mut().dirs.push(dir.to_owned()));
        match self {
            Self::Sqlite => {
                std::fs::create_dir_all(dir)?;
                Ok(format!(
                    "sqlite://{}",
                    dir.join(format!("{prefix}.db")).display()
                ))
            }
            Self::Postgres => {
                let (url, name) = testing::create_scratch_postgres(prefix).await?;
                let _ = SCRATCH.try_with(|scratch| scratch.borrow_mut().databases.push(name));
                Ok(url)
            }
        }
    }
}

/// What one test made that outlives its process unless removed.
#[derive(Default)]
struct Scratch {
    databases: Vec<String>,
    dirs: Vec<PathBuf>,
}

tokio::task_local! {
    static SCRATCH: RefCell<Scratch>;
}

/// Registers test functions by path: `tests![module::name, ...]`.
#[macro_export]
macro_rules! tests {
    ($($path:path),* $(,)?) => {
        &[$((stringify!($path), |engine| Box::pin($path(engine)))),*]
    };
}

/// Runs `tests` on both engines and returns the process exit code.
pub fn run_suite(prefix: &'static str, tests: &[(&'static str, TestFn)]) -> ExitCode {
    let args = Arguments::from_args();
    let (run_postgres, reason) = postgres_mode(prefix);
    let mut trials = Vec::new();
    for engine in [Engine::Sqlite, Engine::Postgres] {
        for (name, test) in tests {
            let test = *test;
            let ignored = engine == Engine::Postgres && !run_postgres;
            trials.push(
                Trial::test(format!("{}::{name}", engine.name()), move || {
                    run(engine, test)
                })
                .with_ignored_flag(ignored),
            );
        }
    }
    if !run_postgres {
        eprintln!("PostgreSQL tests skipped: {reason}");
    }
    libtest_mimic::run(&args, trials).exit_code()
}

/// Whether the PostgreSQL runs execute, and if not why. Drops scratch
/// databases of earlier runs.
fn postgres_mode(prefix: &str) -> (bool, String) {
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let reason = format!(
        "no PostgreSQL at {} (set ATIENDE_TEST_POSTGRES_URL)",
        testing::postgres_admin_url()
    );
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return (ci, reason);
    };
    let reachable = runtime.block_on(testing::postgres_reachable());
    if reachable {
        let _ = runtime.block_on(testing::drop_scratch_postgres(prefix));
    }
    (reachable || ci, reason)
}

/// Adds `authorization: Bearer <token>` to a request.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// The field names of a status's `google.rpc.BadRequest` violations.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn run(engine: Engine, test: TestFn) -> Result<(), libtest_mimic::Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let (outcome, scratch) = SCRATCH
            .scope(RefCell::new(Scratch::default()), async {
                let outcome = test(engine).await;
                (outcome, SCRATCH.with(RefCell::take))
            })
            .await;
        outcome.map_err(|e| format!("{e:#}"))?;
        for name in scratch.databases {
            testing::drop_scratch_database(&name)
                .await
                .map_err(|e| format!("dropping the scratch database: {e}"))?;
        }
        for dir in scratch.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(())
    })
}
