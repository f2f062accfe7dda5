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

use anyhow::Context;
use clap::Args;

use warden_client::Client;

use super::kv_args::{DelArgs, GetArgs, PutArgs};
use super::output::{self, Format, GetView};
use super::txn_parse::{self, Section, TxnBuilder};

/// Flags of `txn`.
#[derive(Args, Debug, Clone, PartialEq, Eq)]
pub struct TxnArgs {
    /// Prompt for each section (on stderr) while reading standard input.
    #[arg(short, long)]
    pub interactive: bool,
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
pub async fn put(
    client: &Client,
    args: PutArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
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
    let resp = client.put_request(req).await?;
    output::put(out, f, &resp)?;
    Ok(())
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
pub async fn del(
    client: &Client,
    args: DelArgs,
    f: Format,
    out: &mut Vec<u8>,
) -> anyhow::Result<()> {
    let resp = client.delete_range(args.to_request()).await?;
    output::del(out, f, &resp)?;
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
    let resp = client.txn(req).await?;
    output::txn(out, f, &resp)?;
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
