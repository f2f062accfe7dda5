//! `warden elect`: campaigns in an election (printing the leader key and
//! proposal once elected, then holding leadership until interrupted), or
//! with `--listen` prints the leader each time it changes.
//!
//! Owns: the election flags and output. The candidate's lease is kept alive
//! by [`super::lease::KeptLease`]; observing moves to the next endpoint when
//! one fails.
//!
//! Must never: claim leadership after the lease was lost (that ends the
//! command with an error), or leave a campaign behind on exit (it resigns and
//! revokes the lease, best effort).

use anyhow::{anyhow, bail};
use clap::Args;

use super::common::print;
use super::lease::KeptLease;
use warden_client::{Client, Election, OpKind};
use warden_proto::v3electionpb as epb;
use warden_proto::v3electionpb::election_client::ElectionClient;

#[derive(Args, Debug)]
pub struct ElectArgs {
    /// Election name.
    pub name: String,
    /// Value to proclaim once elected (required unless --listen).
    pub proposal: Option<String>,
    /// Print the leader's value each time it changes instead of campaigning.
    #[arg(long, short = 'l')]
    pub listen: bool,
    /// TTL of the candidate's lease, in seconds.
    #[arg(long, default_value_t = 10)]
    pub ttl: i64,
}

pub async fn elect(client: &Client, a: ElectArgs) -> anyhow::Result<()> {
    if a.listen {
        return observe(client, a.name.into_bytes()).await;
    }
    let proposal = a
        .proposal
        .ok_or_else(|| anyhow!("elect needs a proposal (or --listen)"))?;
    let mut lease = KeptLease::start(client, a.ttl).await?;
    let (name, id) = (a.name.clone().into_bytes(), lease.id());
    let value = proposal.into_bytes();
    let campaign = client.request(OpKind::Write, move |ch, _| {
        let (name, value) = (name.clone(), value.clone());
        async move {
            ElectionClient::new(ch)
                .campaign(epb::CampaignRequest {
                    name,
                    lease: id,
                    value,
                })
                .await
        }
    });
    let won = tokio::select! {
        r = campaign => r,
        reason = lease.lost() => bail!("campaign for {} failed: {reason}", a.name),
        _ = tokio::signal::ctrl_c() => {
            lease.release().await;
            return Ok(());
        }
    };
    let leader = match won {
        Ok(r) => r
            .leader
            .ok_or_else(|| anyhow!("campaign answered without a leader key"))?,
        Err(e) => {
            lease.release().await;
            return Err(e.into());
        }
    };
    print(&format!(
        "{}\n{}\n",
        String::from_utf8_lossy(&leader.key),
        String::from_utf8_lossy(&proposal_value(client, &leader).await)
    ))?;
    let result = tokio::select! {
        reason = lease.lost() => Err(anyhow!("lost leadership of {}: {reason}", a.name)),
        _ = tokio::signal::ctrl_c() => Ok(()),
    };
    let l = leader.clone();
    let _ = client
        .request(OpKind::Write, move |ch, _| {
            let l = l.clone();
            async move {
                ElectionClient::new(ch)
                    .resign(epb::ResignRequest { leader: Some(l) })
                    .await
            }
        })
        .await;
    lease.release().await;
    result
}

/// The value under the leader key (what was proclaimed).
async fn proposal_value(client: &Client, leader: &epb::LeaderKey) -> Vec<u8> {
    client
        .get(leader.key.clone(), Default::default())
        .await
        .ok()
        .and_then(|r| r.kvs.into_iter().next())
        .map(|kv| kv.value)
        .unwrap_or_default()
}

async fn observe(client: &Client, name: Vec<u8>) -> anyhow::Result<()> {
    let mut observer = Election::new(client, name).observe();
    while let Some(kv) = observer.next().await {
        let kv = kv?;
        print(&format!(
            "{}\n{}\n",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        ))?;
    }
    bail!("observing the election ended")
}
