//! `hub pub`, `hub sub`, `hub req` and `hub nodes`: the client commands a person types.
//!
//! Output goes through [`console`]: when the reader of standard output goes away
//! (`hub sub | head -n 1`), a command ends quietly with status 0 instead of writing on.

use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::tungstenite::Message as WsMessage;

use crate::cli::{NodesArgs, PubArgs, ReqArgs, SubArgs};
use crate::client::{self, content_arg};
use crate::console::{self, OutputError};
use crate::message::Message;

fn fail(e: impl std::fmt::Display) -> ExitCode {
    console::warn(format_args!("hub: {e}"));
    ExitCode::from(1)
}

/// `code` once `printed` went well; else how the failed output ends the command.
fn after(printed: Result<(), OutputError>, code: ExitCode) -> ExitCode {
    match printed {
        Ok(()) => code,
        Err(e) => e.exit_code(),
    }
}

/// `hub pub`.
pub fn publish(args: PubArgs) -> ExitCode {
    smol::block_on(async {
        let mut ws = match client::connect(&args.url, "/").await {
            Ok(ws) => ws,
            Err(e) => return fail(e),
        };
        let template = Message {
            source: args.source,
            group: args.group,
            operation: args.operation,
            resource: args.resource,
            content: b"null".to_vec(),
            ..Message::default()
        };
        if args.stdin {
            let stdin = smol::Unblock::new(std::io::stdin());
            let totals = client::publish_input(ws, template, stdin).await;
            if let Some(why) = &totals.stopped {
                console::warn(format_args!("hub: {why}"));
            }
            let code = if totals.all_accepted() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            // Lost output does not turn refusals into success.
            return match console::line(&totals) {
                Err(OutputError::Closed) => code,
                printed => after(printed, code),
            };
        }
        let mut msg = Message {
            content: content_arg(args.content.as_deref().unwrap_or("null")),
            ..template
        };
        msg.fill_header();
        match client::publish(&mut ws, &msg).await {
            Ok(()) => {
                let _ = ws.close(None).await;
                after(console::line(&msg.id), ExitCode::SUCCESS)
            }
            Err(e) => fail(format!("refused: {e}")),
        }
    })
}

/// `hub sub`.
pub fn subscribe(args: SubArgs) -> ExitCode {
    let mut path = format!("/?resource={}", encode(&args.resource));
    if let Some(g) = &args.group {
        path.push_str(&format!("&group={}", encode(g)));
    }
    if let Some(s) = &args.session {
        path.push_str(&format!("&session={}", encode(s)));
    }
    smol::block_on(async {
        let mut ws = match client::connect(&args.url, &path).await {
            Ok(ws) => ws,
            Err(e) => return fail(e),
        };
        let mut seen = 0u64;
        // The reader may go away while no message comes: stop then too.
        let mut reader_gone = Box::pin(console::closed());
        while args.count.is_none_or(|n| seen < n) {
            let next = smol::future::or(async { Some(client::next(&mut ws).await) }, async {
                (&mut reader_gone).await;
                None
            })
            .await;
            let msg = match next {
                None => {
                    let _ = ws.close(None).await;
                    return ExitCode::SUCCESS;
                }
                Some(Some(Ok(m))) => m,
                Some(Some(Err(e))) => return fail(e),
                Some(None) => return fail("the hub closed the connection"),
            };
            if msg.source == "hub" && msg.group == "hub" {
                if msg.operation == "error" {
                    console::warn(format_args!("hub: {}", client::notice_error(&msg)));
                }
                continue; // notices about this command's own replies
            }
            if let Err(e) = console::line(msg.to_json()) {
                // Nobody reads any more: stop subscribing (and answering).
                let _ = ws.close(None).await;
                return e.exit_code();
            }
            seen += 1;
            if msg.sync && (args.reply.is_some() || args.echo) {
                let mut answer = Message {
                    parent_id: msg.id.clone(),
                    source: "hub-cli".into(),
                    group: msg.group.clone(),
                    operation: "response".into(),
                    resource: msg.resource.clone(),
                    content: match &args.reply {
                        Some(r) => content_arg(r),
                        None => msg.content.clone(),
                    },
                    ..Message::default()
                };
                answer.fill_header();
                if let Err(e) = ws.send(WsMessage::text(answer.to_json())).await {
                    return fail(e);
                }
            }
        }
        let _ = ws.close(None).await;
        ExitCode::SUCCESS
    })
}

/// `hub req`.
pub fn request(args: ReqArgs) -> ExitCode {
    if !(args.timeout.is_finite() && args.timeout > 0.0) {
        console::warn("hub req: --timeout must be a positive number of seconds");
        return ExitCode::from(2);
    }
    smol::block_on(async {
        let mut ws = match client::connect(&args.url, "/").await {
            Ok(ws) => ws,
            Err(e) => return fail(e),
        };
        let mut msg = Message {
            sync: true,
            source: "hub-cli".into(),
            group: args.group,
            operation: args.operation,
            resource: args.resource,
            content: content_arg(args.content.as_deref().unwrap_or("null")),
            ..Message::default()
        };
        msg.fill_header();
        match client::request(&mut ws, &msg, Duration::from_secs_f64(args.timeout)).await {
            Ok(answer) => {
                let _ = ws.close(None).await;
                after(console::line(answer.to_json()), ExitCode::SUCCESS)
            }
            Err(e) => fail(format!("request {} failed: {e}", msg.id)),
        }
    })
}

/// `hub nodes`.
pub fn nodes(args: NodesArgs) -> ExitCode {
    smol::block_on(async {
        let mut ws = match client::connect(&args.url, "/nodes").await {
            Ok(ws) => ws,
            Err(e) => return fail(e),
        };
        let text = loop {
            match smol::stream::StreamExt::next(&mut ws).await {
                Some(Ok(WsMessage::Text(t))) => break t.to_string(),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return fail(e),
                None => return fail("the hub sent no node list (is this a cloud hub?)"),
            }
        };
        if args.json {
            return after(console::line(&text), ExitCode::SUCCESS);
        }
        let rows: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => return fail(format!("bad node list: {e}")),
        };
        let header = format!(
            "{:<24} {:<10} {:<22} {:<20} {:>8}",
            "NODE", "PROTOCOL", "ADDRESS", "SINCE (UTC)", "QUEUED"
        );
        if let Err(e) = console::line(header) {
            return e.exit_code();
        }
        for r in rows {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            let since = r["since"].as_u64().map_or_else(|| "-".to_owned(), utc);
            let row = format!(
                "{:<24} {:<10} {:<22} {:<20} {:>8}",
                s("node_id"),
                s("protocol"),
                s("address"),
                since,
                r["queued"].as_u64().unwrap_or(0)
            );
            if let Err(e) = console::line(row) {
                return e.exit_code();
            }
        }
        ExitCode::SUCCESS
    })
}

/// `YYYY-MM-DD HH:MM:SS` for milliseconds since the epoch.
fn utc(ms: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_query_values() {
        assert_eq!(super::encode("node/a b&c"), "node/a%20b%26c");
        assert_eq!(super::utc(86_400_000 + 3_723_000), "1970-01-02 01:02:03");
    }
}
