//! A lock-protected job: take the `jobs/nightly` lock, do the work with
//! writes fenced by the lock's token (refused by the server if another
//! holder was granted the lock meanwhile, e.g. because this process was
//! paused past its lease), release.
//!
//! ```text
//! cargo run -p warden-client --example locked_job
//! ```
//!
//! Endpoints come from `WARDEN_ENDPOINTS` (default `127.0.0.1:2379`).

use warden_client::{Client, ClientError, ClientOptions, Mutex, Session};
use warden_proto::etcdserverpb::{request_op, PutRequest, RequestOp, TxnRequest};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let endpoints = std::env::var("WARDEN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect([endpoints], ClientOptions::default()).await?;
    let session = Session::new(&client, 10).await?;
    let guard = Mutex::new(&session, "jobs/nightly").lock().await?;
    println!("holding jobs/nightly with fencing token {}", guard.token());

    for step in 1..=3 {
        // Each write of the job is applied only while this hold is current,
        // and exactly once even if it has to be retried.
        let txn = TxnRequest {
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: b"jobs/nightly/progress".to_vec(),
                    value: format!("step {step} by token {}", guard.token()).into_bytes(),
                    ..Default::default()
                })),
            }],
            ..Default::default()
        };
        guard.fenced_txn(txn).await?;
        println!("step {step} done");
    }

    guard.release().await?;
    session.close().await?;
    println!("released");
    Ok(())
}
