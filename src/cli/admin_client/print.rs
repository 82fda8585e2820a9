//! Printing the admin API's answers as aligned tables for people.

use serde_json::Value;

/// A value as a table cell. Values come from sources and people: control characters (a
/// terminal's escape sequences, line breaks that would forge rows) are shown escaped.
pub(super) fn text(value: &Value) -> String {
    let raw = match value {
        Value::Null => return "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if raw.chars().any(char::is_control) {
        raw.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        raw
    }
}

pub(super) fn identities(value: &Value) -> String {
    let list: Vec<String> = value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|i| format!("{}/{}", text(&i["connection"]), text(&i["external_id"])))
                .collect()
        })
        .unwrap_or_default();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

pub(super) fn print_bindings(page: &Value) {
    let rows: Vec<Vec<String>> = page["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|b| {
                    vec![
                        text(&b["id"]),
                        text(&b["user_pool_id"]),
                        text(&b["connection"]),
                        text(&b["external_id"]),
                        text(&b["status"]),
                        text(&b["reason"]),
                        b["candidates"].as_array().map_or(0, Vec::len).to_string(),
                        text(&b["created_at"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("no bindings");
        return;
    }
    print_table(
        &[
            "ID",
            "POOL",
            "CONNECTION",
            "EXTERNAL ID",
            "STATUS",
            "REASON",
            "CANDIDATES",
            "CREATED",
        ],
        rows,
    );
    if let Some(cursor) = page["next_cursor"].as_str() {
        println!("(more: --json and the API's cursor={cursor})");
    }
}

pub(super) fn print_binding(b: &Value) {
    for key in [
        "id",
        "user_pool_id",
        "connection",
        "external_id",
        "status",
        "reason",
        "created_at",
        "expires_at",
        "resolution",
        "user_id",
        "resolved_by",
        "resolved_at",
        "resolution_reason",
    ] {
        println!("{:<18} {}", format!("{key}:"), text(&b[key]));
    }
    println!("{:<18} {}", "profile:", b["profile"]);
    let rows = b["candidates"]
        .as_array()
        .map(|c| {
            c.iter()
                .map(|u| {
                    vec![
                        text(&u["id"]),
                        text(&u["email"]),
                        text(&u["phone"]),
                        text(&u["username"]),
                        text(&u["name"]),
                        identities(&u["identities"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!("candidates:");
    print_table(
        &["ID", "EMAIL", "PHONE", "USERNAME", "NAME", "IDENTITIES"],
        rows,
    );
}

/// Left-aligned columns separated by two spaces, widths by the widest cell (in characters).
pub(super) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
}
