//! Redis beside Shoal's key-value store in `kv.sh`: Debian's `redis-server`
//! started on loopback with a given persistence, optionally with one
//! replica, and connections to it (the `redis` crate).

use std::path::Path;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use shoal_tests::{Proc, free_port, wait_for};

/// How a Redis server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly no`, no snapshots: memory only, like Shoal's
    /// `--durability none` without a data directory.
    Memory,
    /// `appendonly yes`, `appendfsync everysec`: written to the OS at once,
    /// flushed once a second, like Shoal with a data directory.
    EverySecond,
}

/// How long a command may wait for its answer: past `WAIT 1`'s own
/// timeout (1 s in `kv_bench`), so that a late acknowledgement is a slow
/// answer rather than the client's error (at the crate's default of 500 ms,
/// a stall of the replicated row failed all 32 clients at once, twice).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A `redis-server` process on 127.0.0.1, stopped when dropped.
pub struct RedisServer {
    pub port: u16,
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Start a server; `replica_of`: the port of the primary to follow.
    pub async fn start(persistence: Persistence, replica_of: Option<u16>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--save".into(),
            String::new(),
        ];
        match persistence {
            Persistence::Memory => args.extend(["--appendonly".into(), "no".into()]),
            Persistence::EverySecond => args.extend([
                "--appendonly".into(),
                "yes".into(),
                "--appendfsync".into(),
                "everysec".into(),
            ]),
        }
        if let Some(primary) = replica_of {
            args.extend([
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.to_string(),
            ]);
        }
        // On PATH: `bench/kv.sh` installs it (`need_tools redis-server`).
        let proc = Proc::spawn("redis", Path::new("redis-server"), &args, &[], dir.path());
        let server = RedisServer {
            port,
            proc,
            _dir: dir,
        };
        wait_for(
            Duration::from_secs(10),
            "redis-server to answer PING",
            || async {
                let mut c = server.connect().await.ok()?;
                redis::cmd("PING").query_async::<String>(&mut c).await.ok()
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        Ok(server)
    }

    /// A primary with one replica, returned once the replica is in sync.
    pub async fn start_replicated(persistence: Persistence) -> anyhow::Result<(Self, Self)> {
        let primary = Self::start(persistence, None).await?;
        let replica = Self::start(persistence, Some(primary.port)).await?;
        let mut c = primary.connect().await?;
        wait_for(
            Duration::from_secs(10),
            "the Redis replica to be in sync",
            || {
                let mut c = c.clone();
                async move {
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query_async(&mut c)
                        .await
                        .ok()?;
                    (info.contains("connected_slaves:1") && info.contains("state=online"))
                        .then_some(())
                }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        // One write acknowledged by the replica, so WAIT has a baseline.
        redis::cmd("SET")
            .arg("bench/ready")
            .arg("1")
            .exec_async(&mut c)
            .await?;
        Ok((primary, replica))
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// A connection (one socket; clones share it). Its response timeout is
    /// [`RESPONSE_TIMEOUT`], not the `redis` crate's 500 ms: a `WAIT 1`
    /// may take its full second, and Shoal's and etcd's clients in
    /// `kv_bench` set none, so a slow answer counts in the latency there.
    pub async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        let mut connection = client.get_multiplexed_async_connection().await?;
        connection.set_response_timeout(RESPONSE_TIMEOUT);
        Ok(connection)
    }
}
