//! Polling with a deadline: the way tests wait for a condition that another
//! process brings about, instead of sleeping a guessed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often [`until`] asks again.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// Calls `f` every [`INTERVAL`] until it returns `Ok`, and returns that
/// value; once `timeout` has passed, returns the last error, prefixed with
/// how long it waited.
pub async fn until<T, E, F, Fut>(timeout: Duration, mut f: F) -> Result<T, String>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("condition not met within {timeout:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(INTERVAL).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_success() {
        let calls = AtomicU32::new(0);
        let v = until(Duration::from_secs(5), || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n < 3 {
                    Err("not yet")
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(v, Ok(3));
    }

    #[tokio::test]
    async fn gives_up_with_the_last_error() {
        let e = until(Duration::from_millis(120), || async {
            Err::<(), _>("still down")
        })
        .await
        .unwrap_err();
        assert!(e.contains("still down"), "{e}");
    }
}
