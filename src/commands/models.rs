//! `ccproxy models refresh`: the running server fetches the upstream's model list again now
//! (`POST /api/models/refresh`), and the list is printed with where it came from.

use serde_json::Value;

use super::status::{call_server, columns};
use crate::cli::ReportFormat;
use crate::config::Settings;

/// Asks the server to refresh its model list and prints it. Exit code 1 when the upstream gave
/// none (the server kept its cached or built-in list).
pub async fn refresh(settings: &Settings, format: ReportFormat) -> anyhow::Result<u8> {
    let (headers, list) =
        call_server(settings, reqwest::Method::POST, "/api/models/refresh").await?;
    let source = headers
        .get(crate::model_catalog::SOURCE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("upstream");
    match format {
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&list)?),
        ReportFormat::Table | ReportFormat::Csv => print!("{}", render(&list, source)),
    }
    Ok(u8::from(source != "upstream"))
}

/// The list as a table, with a line that says where it came from.
pub fn render(list: &Value, source: &str) -> String {
    let models = list["data"].as_array().cloned().unwrap_or_default();
    let mut out = match source {
        "upstream" => format!("{} models from the upstream\n", models.len()),
        other => format!(
            "the upstream gave no model list: serving the {other} list ({} models)\n",
            models.len()
        ),
    };
    let mut rows = vec![[
        "MODEL".to_owned(),
        "NAME".to_owned(),
        "CONTEXT".to_owned(),
        "MAX OUTPUT".to_owned(),
    ]];
    let n = |v: &Value| v.as_u64().map_or_else(|| "-".to_owned(), |n| n.to_string());
    for m in &models {
        rows.push([
            m["id"].as_str().unwrap_or_default().to_owned(),
            m["display_name"].as_str().unwrap_or_default().to_owned(),
            n(&m["max_input_tokens"]),
            n(&m["max_tokens"]),
        ]);
    }
    out.push_str(&columns(&rows));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_the_source_and_the_limits() {
        let list = serde_json::json!({"data": [
            {"id": "claude-x", "display_name": "X", "max_input_tokens": 200000, "max_tokens": 64000},
            {"id": "fast", "display_name": "fast → claude-x"}
        ]});
        let t = render(&list, "upstream");
        assert!(t.starts_with("2 models from the upstream\n"), "{t}");
        assert!(
            t.contains("claude-x  X                200000   64000"),
            "{t}"
        );
        assert!(t.lines().last().unwrap().ends_with("-        -"), "{t}");
        assert!(render(&list, "built-in").contains("serving the built-in list"));
    }
}
