//! `hub pub`, `hub sub`, `hub req`, `hub nodes` and `hub status`: the client commands a person
//! types.
//!
//! Output goes through [`console`]: when the reader of standard output goes away
//! (`hub sub | head -n 1`), a command ends quietly with status 0 instead of writing on.

use std::process::ExitCode;
use std::time::Duration;

use async_tungstenite::tungstenite::Message as WsMessage;

use crate::cli::{NodesArgs, PubArgs, ReqArgs, StatusArgs, SubArgs};
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

/// The one text message a hub answers on `path` (`/nodes`, `/status`); `missing` says what the
/// endpoint probably is when it sends none.
async fn answer(url: &str, path: &str, missing: &str) -> Result<String, String> {
    let mut ws = client::connect(url, path).await?;
    loop {
        match smol::stream::StreamExt::next(&mut ws).await {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
            None => return Err(missing.to_owned()),
        }
    }
}

/// `hub nodes`.
pub fn nodes(args: NodesArgs) -> ExitCode {
    smol::block_on(async {
        let missing = "the hub sent no node list (is this a cloud hub?)";
        let text = match answer(&args.url, "/nodes", missing).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        if args.json {
            return after(console::line(&text), ExitCode::SUCCESS);
        }
        let rows: Vec<serde_json::Value> = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => return fail(format!("bad node list: {e}")),
        };
        // Cluster mode names the instance holding each node: one more column, only then.
        let cluster = rows.iter().any(|r| r["instance"].is_string());
        let instance = |r: &serde_json::Value| match (cluster, r["instance"].as_str()) {
            (false, _) => String::new(),
            (true, i) => format!(" {:<16}", i.unwrap_or("-")),
        };
        let header = format!(
            "{:<24}{} {:<10} {:<22} {:<20} {:>9} {:>9} {:>8} {}",
            "NODE",
            instance(&serde_json::json!({"instance": "INSTANCE"})),
            "PROTOCOL",
            "ADDRESS",
            "SINCE (UTC)",
            "RTT (ms)",
            "IN-FLIGHT",
            "QUEUED",
            "LAST-CAUSE"
        );
        if let Err(e) = console::line(header) {
            return e.exit_code();
        }
        for r in rows {
            let s = |k: &str| r[k].as_str().unwrap_or("-").to_owned();
            let since = r["since"].as_u64().map_or_else(|| "-".to_owned(), utc);
            let in_flight = r["in_flight"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |n| n.to_string());
            let row = format!(
                "{:<24}{} {:<10} {:<22} {:<20} {:>9} {:>9} {:>8} {}",
                s("node_id"),
                instance(&r),
                s("protocol"),
                s("address"),
                since,
                rtt_ms(&r["rtt_ms"]),
                in_flight,
                r["queued"].as_u64().unwrap_or(0),
                s("last_cause"),
            );
            if let Err(e) = console::line(row.trim_end()) {
                return e.exit_code();
            }
        }
        ExitCode::SUCCESS
    })
}

/// A round trip in milliseconds as `hub nodes` and `hub status` print it: 3 decimals below
/// 10 ms, 1 above; `-` when there is none.
fn rtt_ms(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(ms) if ms < 10.0 => format!("{ms:.3}"),
        Some(ms) => format!("{ms:.1}"),
        None => "-".to_owned(),
    }
}

/// `hub status`.
pub fn status(args: StatusArgs) -> ExitCode {
    smol::block_on(async {
        let missing = "the hub sent no status (is this an edge hub?)";
        let text = match answer(&args.url, "/status", missing).await {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        if args.json {
            return after(console::line(&text), ExitCode::SUCCESS);
        }
        let s: serde_json::Value = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => return fail(format!("bad status: {e}")),
        };
        let printed = console::line(status_table(&s));
        after(printed, ExitCode::SUCCESS)
    })
}

/// The lines `hub status` prints for a `/status` answer.
fn status_table(s: &serde_json::Value) -> String {
    let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
    let count = |k: &str| s[k].as_u64().unwrap_or(0);
    let at = |k: &str| s[k].as_u64().map(|ms| format!("{} UTC", utc(ms)));
    let cloud = match s["address"].as_str() {
        Some(peer) => format!("{}, reached at {peer}", text("cloud")),
        None => text("cloud"),
    };
    let last_error = match (s["last_error"].as_str(), at("last_error_at")) {
        (Some(e), Some(when)) => format!("{when}: {e} ({})", text("last_cause")),
        _ => "-".to_owned(),
    };
    let rows = [
        (
            "node",
            format!("{} (project {})", text("node_id"), text("project_id")),
        ),
        ("link", text("link")),
        ("protocol", text("protocol")),
        ("cloud", cloud),
        ("up since", at("up_since").unwrap_or_else(|| "-".to_owned())),
        ("rtt (ms)", rtt_ms(&s["rtt_ms"])),
        ("queued up", count("queued_up").to_string()),
        (
            "in flight",
            format!(
                "{} up, {} down",
                count("in_flight_up"),
                count("in_flight_down")
            ),
        ),
        ("last error", last_error),
        ("reconnects", count("reconnects").to_string()),
    ];
    rows.iter()
        .map(|(k, v)| format!("{k:<11} {v}"))
        .collect::<Vec<_>>()
        .join("\n")
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
