//! `ccproxy usage`: the usage report (table, JSON or CSV) from the usage store.

use std::io::Write;

use anyhow::Context;

use crate::cli::{ReportFormat as Format, UsageArgs, UsageGrouping};
use crate::observability::usage::report::{self, GroupBy, Report, UsageReader};

fn group_by(g: UsageGrouping) -> GroupBy {
    match g {
        UsageGrouping::Model => GroupBy::Model,
        UsageGrouping::Day => GroupBy::Day,
        UsageGrouping::Hour => GroupBy::Hour,
        UsageGrouping::Mode => GroupBy::Mode,
        UsageGrouping::Credential => GroupBy::Credential,
        UsageGrouping::Bucket => GroupBy::Bucket,
        UsageGrouping::Key => GroupBy::Key,
    }
}

/// Runs the report. `default_db` is the configured database, used unless
/// `--db` names another. Returns the exit code. A missing database is not an
/// error: the table format says so; JSON and CSV print an empty report (and
/// the note goes to stderr).
pub fn run(args: &UsageArgs, default_db: crate::db::Database) -> anyhow::Result<i32> {
    let since = report::parse_since(&args.since)?;
    let by = group_by(args.by);
    let format = args.format;
    let db = args
        .db
        .clone()
        .map_or(default_db, crate::db::Database::Sqlite);
    let shown = match &db {
        crate::db::Database::Sqlite(p) => p.display().to_string(),
        crate::db::Database::Postgres(u) => u.to_string(),
    };
    let since_ms = report::since_ms(since, crate::util::time::now_ms());

    let reader = UsageReader::open_db(&db)?;
    let report = match &reader {
        Some(r) => r.report(since_ms, by)?,
        None => Report {
            since_ms,
            by,
            totals: report::Stats::default(),
            groups: Vec::new(),
        },
    };
    let period = match since {
        Some(_) => format!("the last {}", args.since.trim()),
        None => "all time".to_owned(),
    };
    let text = match (format, reader.is_some()) {
        (Format::Table, false) => {
            format!("no usage recorded yet at {shown}\n")
        }
        (Format::Table, true) => report::render_table(
            &report,
            &format!(
                "ccproxy usage over {period}, by {} ({})",
                by.as_str(),
                shown
            ),
        ),
        (Format::Json, _) => {
            let mut s = serde_json::to_string_pretty(&report).context("serializing the report")?;
            s.push('\n');
            s
        }
        (Format::Csv, _) => report::render_csv(&report),
    };
    if reader.is_none() && format != Format::Table {
        eprintln!("no usage recorded yet at {shown}");
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(0),
        // `ccproxy usage | head`: the reader went away; not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e).context("writing the report"),
    }
}
