//! The key-value commands of the command-line client: `put`, `get`, `del`,
//! `txn` and `compaction`: the `txn` and `compaction` flags, reading a value
//! or a transaction from standard input, and sending the requests. The
//! `put`/`get`/`del` flags and their translation into requests live in
//! [`super::kv_args`] (shared with the request lines of `txn`), the
//! transaction syntax in [`super::txn_parse`]; printing is left to
//! [`super::output`].
//!
//! Must never: print to stdout itself (output goes into the caller's buffer
//! through [`super::output`]), or be imported by `kv_args` or `txn_parse`
//! (they sit below it).

use std::io::{BufRead, Read, Write};

use anyhow::{anyhow, bail, Context};
use clap::Args;

use tonic::metadata::{Ascii, MetadataValue};
use warden_client::{Client, OpKind};
use warden_proto::etcdserverpb::kv_client::KvClient;
use warden_proto::etcdserverpb::{request_op, response_op, PutResponse, RequestOp, TxnRequest};
use warden_proto::warden::v1 as wpb;

use super::kv_args::{DelArgs, GetArgs, PutArgs};
use super::output::{self, Format, GetView};
use super::txn_parse::{self, Section, TxnBuilder};

/// Flags of `put`: those a `txn` line takes too, and `--fenced`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct PutCmd {
    #[command(flatten)]
    pub args: PutArgs,
    /// Write only while holding the lock `warden lock` runs this command
    /// under (a fenced write: the lock, token and handle come from
    /// WARDEN_LOCK_NAME, WARDEN_LOCK_TOKEN and WARDEN_LOCK_HANDLE). Refused,
    /// writing nothing, once the hold has ended.
    #[arg(long)]
    pub fenced: bool,
    #[command(flatten)]
    pub once: OnceArgs,
}

/// Flags of `del`: those a `txn` line takes too, and the session ids.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct DelCmd {
    #[command(flatten)]
    pub args: DelArgs,
    #[command(flatten)]
    pub once: OnceArgs,
}

/// Exactly-once flags of a write (see docs/exactly-once.md): sent as the
/// `warden-client-id` and `warden-request-id` metadata, so running the same
/// command again with the same ids applies it once and prints the first
/// answer again. With them the command also retries on its own after a
/// failure that leaves the outcome unknown (a timeout, a leader change).
#[derive(Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct OnceArgs {
    /// Client id of an exactly-once write (at most 128 bytes; give
    /// --request-id too).
    #[arg(long, requires = "request_id")]
    pub client_id: Option<String>,
    /// Request id of an exactly-once write: the same id again is a retry,
    /// answered with the first attempt's result (give --client-id too).
    #[arg(long, requires = "client_id")]
    pub request_id: Option<u64>,
}

/// The metadata pairs of a tagged write.
type SessionMetadata = [(&'static str, MetadataValue<Ascii>); 2];

impl OnceArgs {
    /// After the human output of a tagged write, the revision it applied
    /// at (the same on a retry), so a person retrying by hand sees that
    /// it applied once. JSON output carries it in the header already.
    fn print_revision(
        &self,
        out: &mut Vec<u8>,
        f: Format,
        header: Option<&warden_proto::etcdserverpb::ResponseHeader>,
    ) -> anyhow::Result<()> {
        if self.client_id.is_some() && f != Format::Json {
            writeln!(out, "revision {}", header.map_or(0, |h| h.revision))?;
        }
        Ok(())
    }

    /// The metadata pairs to send, if any.
    fn metadata(&self) -> anyhow::Result<Option<SessionMetadata>> {
        match (&self.client_id, self.request_id) {
            (Some(c), Some(r)) => {
                let c = MetadataValue::try_from(c.as_str())
                    .map_err(|_| anyhow!("--client-id {c:?} must be printable ASCII"))?;
                let r = MetadataValue::from(r);
                Ok(Some([("warden-client-id", c), ("warden-request-id", r)]))
            }
            (None, None) => Ok(None),
            _ => bail!("--client-id and --request-id go together"),
        }
    }
}

/// Sends one etcd KV write tagged with `once`'s ids. Tagged, a retry
/// cannot apply it twice, so the client retries it on any transient
/// failure, as it would a read.
async fn send_once<M, T, F, Fut>(
    client: &Client,
    once: &OnceArgs,
    msg: M,
    call: F,
) -> anyhow::Result<T>
where
    M: Clone + Send + 'static,
    F: Fn(KvClient<warden_client::AuthChannel>, tonic::Request<M>) -> Fut + Clone,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let Some(md) = once.metadata()? else {
        bail!("send_once without session ids");
    };
    Ok(client
        .request(OpKind::Read, move |ch, left| {
            let mut req = tonic::Request::new(msg.clone());
            req.set_timeout(left);
            for (k, v) in md.clone() {
                req.metadata_mut().insert(k, v);
            }
            call.clone()(KvClient::new(ch), req)
        })
        .await?)
}

/// The hold `warden lock` handed this process in its environment.
struct HeldLock {
    name: String,
    token: u64,
    handle: Vec<u8>,
}

impl HeldLock {
    fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| {
            std::env::var(k).map_err(|_| {
                anyhow!("--fenced needs {k}: run it as the command of `warden lock NAME -- ...`")
            })
        };
        let name = var("WARDEN_LOCK_NAME")?;
        let token = var("WARDEN_LOCK_TOKEN")?;
        let token = token
            .parse()
            .map_err(|_| anyhow!("WARDEN_LOCK_TOKEN {token:?} is not a token"))?;
        let handle = unhex(&var("WARDEN_LOCK_HANDLE")?)
            .ok_or_else(|| anyhow!("WARDEN_LOCK_HANDLE is not hexadecimal"))?;
        Ok(HeldLock {
            name,
            token,
            handle,
        })
    }
}

/// Bytes from (an even number of) hex digits.
fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|d| u8::from_str_radix(d, 16).ok()))
        .collect()
}

/// Flags of `txn`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TxnArgs {
    /// Prompt for each section (on stderr) while reading standard input.
    #[arg(short, long)]
    pub interactive: bool,
    #[command(flatten)]
    pub once: OnceArgs,
}

/// Flags of `compaction`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct CompactionArgs {
    /// Compact the history before this revision.
    #[arg(allow_negative_numbers = true)]
    pub revision: i64,
    /// Wait until the compaction has been applied.
    #[arg(long)]
    pub physical: bool,
}

/// `warden put`.
pub async fn put(client: &Client, cmd: PutCmd, f: Format, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let PutCmd { args, fenced, once } = cmd;
    if fenced && once.client_id.is_some() {
        bail!("--fenced and --client-id cannot be used together yet");
    }
    let held = if fenced {
        Some(HeldLock::from_env()?)
    } else {
        None
    };
    let stdin_value = if args.value.is_none() && !args.ignore_value {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the value from standard input")?;
        Some(buf)
    } else {
        None
    };
    let req = args.to_request(stdin_value)?;
    let resp = match held {
        None if once.client_id.is_some() => {
            send_once(
                client,
                &once,
                req,
                |mut kv, r| async move { kv.put(r).await },
            )
            .await?
        }
        None => client.put_request(req).await?,
        Some(held) => fenced_put(client, held, req).await?,
    };
    output::put(out, f, &resp)?;
    once.print_revision(out, f, resp.header.as_ref())?;
    Ok(())
}

/// A put as a one-op `FencedTxn` under `held`.
async fn fenced_put(
    client: &Client,
    held: HeldLock,
    req: warden_proto::etcdserverpb::PutRequest,
) -> anyhow::Result<PutResponse> {
    let name = held.name.clone();
    let fenced = wpb::FencedTxnRequest {
        name: held.name,
        token: held.token,
        handle: held.handle,
        txn: Some(TxnRequest {
            compare: Vec::new(),
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(req)),
            }],
            failure: Vec::new(),
        }),
    };
    let resp = client
        .request(OpKind::Write, move |ch, _| {
            let req = fenced.clone();
            async move {
                wpb::locks_client::LocksClient::new(ch)
                    .fenced_txn(req)
                    .await
            }
        })
        .await
        .with_context(|| format!("fenced write under lock {name}"))?;
    match resp.responses.into_iter().next().and_then(|r| r.response) {
        Some(response_op::Response::ResponsePut(mut p)) => {
            p.header = resp.header;
            Ok(p)
        }
        _ => bail!("fenced write under lock {name}: the answer holds no put"),
    }
}

/// `warden get`.
pub async fn get(
    client: &Client,
    args: GetArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let resp = client.range(args.to_request()).await?;
    output::get(out, f, &resp, get_view(&args))?;
    Ok(())
}

/// `warden del`.
pub async fn del(client: &Client, cmd: DelCmd, f: Format, out: &mut Vec<u8>) -> anyhow::Result<()> {
    let DelCmd { args, once } = cmd;
    let req = args.to_request();
    let resp = if once.client_id.is_some() {
        send_once(client, &once, req, |mut kv, r| async move {
            kv.delete_range(r).await
        })
        .await?
    } else {
        client.delete_range(req).await?
    };
    output::del(out, f, &resp)?;
    once.print_revision(out, f, resp.header.as_ref())?;
    Ok(())
}

/// `warden txn`: reads the transaction from standard input.
pub async fn txn(
    client: &Client,
    args: TxnArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let req = if args.interactive {
        read_txn_interactive()?
    } else {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading the transaction from standard input")?;
        txn_parse::parse_txn(&input)?
    };
    let resp = if args.once.client_id.is_some() {
        send_once(client, &args.once, req, |mut kv, r| async move {
            kv.txn(r).await
        })
        .await?
    } else {
        client.txn(req).await?
    };
    output::txn(out, f, &resp)?;
    args.once.print_revision(out, f, resp.header.as_ref())?;
    Ok(())
}

/// `warden compaction`.
pub async fn compaction(
    client: &Client,
    args: CompactionArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let resp = client.compact(args.revision, args.physical).await?;
    output::compaction(out, f, args.revision, &resp)?;
    Ok(())
}

/// Reads a transaction line by line, prompting on stderr like etcdctl -i.
fn read_txn_interactive() -> anyhow::Result<warden_proto::etcdserverpb::TxnRequest> {
    let mut builder = TxnBuilder::new();
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let mut prompted: Option<Section> = None;
    while builder.section() != Section::Done {
        if prompted != Some(builder.section()) {
            let prompt = match builder.section() {
                Section::Compares => "compares:",
                Section::Success => "\nsuccess requests (get, put, del):",
                Section::Failure | Section::Done => "\nfailure requests (get, put, del):",
            };
            let mut err = std::io::stderr();
            // A prompt that cannot be shown is not worth failing the command.
            let _ = writeln!(err, "{prompt}");
            prompted = Some(builder.section());
        }
        match lines.next() {
            Some(line) => builder.push_line(&line.context("reading standard input")?)?,
            None => break,
        }
    }
    Ok(builder.finish())
}

/// How `get` prints, from its flags.
fn get_view(args: &GetArgs) -> GetView {
    GetView {
        value_only: args.print_value_only,
        count_only: args.count_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_read_from_hex() {
        assert_eq!(unhex("00ff10"), Some(vec![0, 0xff, 0x10]));
        assert_eq!(unhex(" aB \n"), Some(vec![0xab]));
        assert_eq!(unhex(""), Some(vec![]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex("é1"), None);
    }
}
