//! Headless Chromium for the dashboard test, driven over WebDriver: our own
//! `chromedriver` on a free port, a `fantoccini` client talking to it.
//!
//! Chromium and chromedriver are Debian's `chromium` and `chromium-driver`
//! (or `SHOAL_CHROMIUM` / `SHOAL_CHROMEDRIVER`). Without them a browser test
//! is skipped with a note, except under `CI=true`, where it fails with the
//! command that installs them.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::binaries::logs_dir;
use crate::process::Proc;
use crate::wait::wait_until_async;

const INSTALL: &str = "apt-get install chromium chromium-driver";

/// A browser session; the session (and so Chromium) is closed on drop, then
/// chromedriver is killed.
pub struct Browser {
    client: Option<Client>,
    _driver: Proc,
}

fn find(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Ok(path) = std::env::var(env) {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    names.iter().find_map(|name| {
        path.split(':')
            .chain(["/usr/bin", "/usr/local/bin"])
            .map(|dir| PathBuf::from(dir).join(name))
            .find(|candidate| candidate.is_file())
    })
}

impl Browser {
    /// Start chromedriver and open a headless Chromium session. `None` when
    /// they are not installed and this is not CI (the caller skips).
    pub async fn start() -> Option<Browser> {
        let chromium = find("SHOAL_CHROMIUM", &["chromium", "chromium-browser"]);
        let driver = find("SHOAL_CHROMEDRIVER", &["chromedriver"]);
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let message = format!(
                "the browser test needs Chromium and chromedriver; install them with `{INSTALL}` \
                 (./scripts/test does as root)"
            );
            return crate::skip_unless_ci(&message);
        };
        let port = crate::free_port();
        let driver = Proc::spawn(
            "chromedriver",
            &driver,
            &[format!("--port={port}")],
            &[],
            &logs_dir(),
        );
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("reqwest client");
        let status = format!("{url}/status");
        wait_until_async(Duration::from_secs(20), "chromedriver /status", || async {
            match http.get(&status).send().await {
                Ok(resp) => resp
                    .json::<serde_json::Value>()
                    .await
                    .is_ok_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e}; chromedriver log:\n{}", driver.stderr()));

        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                ],
            }),
        );
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot open a Chromium session through chromedriver: {e}; is `{}` a working \
                     Chromium? ({INSTALL}); chromedriver log:\n{}",
                    chromium.display(),
                    driver.stderr()
                )
            });
        Some(Browser {
            client: Some(client),
            _driver: driver,
        })
    }

    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open until drop")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Closing the session makes chromedriver stop Chromium; killing
        // chromedriver alone would leave the browser running. Needs the
        // multi-thread runtime the browser tests use.
        let close = async move {
            match tokio::time::timeout(Duration::from_secs(5), client.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => eprintln!("closing the browser session: {e}"),
                Err(_) => eprintln!("closing the browser session: no answer within 5 s"),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => tokio::task::block_in_place(|| handle.block_on(close)),
            Err(_) => eprintln!("no runtime to close the browser session with"),
        }
    }
}
