//! Leader election: campaign for `service/primary`, act as the leader
//! until Ctrl-C or the session is lost, then resign so the next candidate
//! takes over at once. Run several copies to watch the hand-over:
//!
//! ```text
//! cargo run -p warden-client --example leader_election -- host-a
//! cargo run -p warden-client --example leader_election -- host-b
//! ```
//!
//! Endpoints come from `WARDEN_ENDPOINTS` (default `127.0.0.1:2379`).

use warden_client::{Client, ClientError, ClientOptions, Election, Session};

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let me = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "candidate".into());
    let endpoints = std::env::var("WARDEN_ENDPOINTS").unwrap_or_else(|_| "127.0.0.1:2379".into());
    let client = Client::connect([endpoints], ClientOptions::default()).await?;

    // The candidacy lives on this lease: if the process dies, it ends
    // within the TTL and another candidate is elected.
    let session = Session::new(&client, 5).await?;
    let election = Election::new(&client, "service/primary");
    println!("{me}: campaigning");
    let leadership = election.campaign(&session, me.clone()).await?;
    println!(
        "{me}: elected (key {})",
        String::from_utf8_lossy(&leadership.key().key)
    );

    tokio::select! {
        reason = session.lost() => {
            // Leadership is gone with the lease: stop acting as leader now.
            eprintln!("{me}: lost leadership: {reason}");
            return Err(ClientError::SessionLost(reason));
        }
        _ = tokio::signal::ctrl_c() => {}
    }
    leadership.resign().await?;
    session.close().await?;
    println!("{me}: resigned");
    Ok(())
}
