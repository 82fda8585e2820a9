//! `identity-sync users import FILE`: one account per line (JSON lines, or CSV as `users export`
//! writes it), each line all-or-nothing, bad or conflicting lines reported with their number and
//! skipped; importing the same file again adds nothing. Lines are decided a chunk at a time (see
//! `bulk`), with progress on a terminal.

use std::{
    io::{BufRead, BufReader, IsTerminal, Read},
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::{Map, Value};

use crate::{
    accounts::AccountInput,
    bulk::{self, CHUNK_LINES, Imported, Line},
    db,
    domain::CountryCode,
    settings::Settings,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Jsonl,
    /// A header line, then one account per row (as `users export --format csv` writes them).
    Csv,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The file; `-` reads standard input.
    pub file: PathBuf,
    /// Calling code for phone numbers written without `+` (e.g. 86).
    #[arg(long, value_name = "CODE")]
    pub default_country_code: Option<String>,
    /// The file's format; by default CSV for a `.csv` file, JSON lines otherwise.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// Counts so far.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    lines: u64,
    added: u64,
    already_present: u64,
    failed: u64,
    identities_linked: u64,
    seconds: f64,
}

pub async fn run(args: ImportArgs, settings: &Settings) -> anyhow::Result<ExitCode> {
    let default_country = args
        .default_country_code
        .as_deref()
        .map(CountryCode::parse)
        .transpose()
        .map_err(|m| anyhow::anyhow!("--default-country-code: {m}"))?;
    let (reader, format) = open_input(&args)?;
    let pool = db::connect_and_migrate(&settings.database).await?;
    let started = Instant::now();
    let mut summary = Summary::default();
    let mut progress = Progress::new(args.json);
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<Read1>>(2);
    // Reading and normalising (CPU) runs beside the database's work on the previous chunk.
    let reading = tokio::task::spawn_blocking({
        let file = args.file.clone();
        move || read_all(reader, format, default_country, &file, sender)
    });
    while let Some(chunk) = receiver.recv().await {
        let lines: Vec<Line> = chunk
            .iter()
            .filter_map(|r| r.line.as_ref().ok().cloned())
            .collect();
        let decided = bulk::import_chunk(&pool, &lines)
            .await
            .context("the database failed during the import (lines before it are imported)")?;
        let mut decided = decided.into_iter();
        for read in chunk {
            summary.lines += 1;
            let outcome = match read.line {
                Err(reason) => Imported::Failed(bulk::Refused {
                    code: "invalid_field",
                    message: reason,
                }),
                Ok(_) => decided.next().expect("one outcome per line"),
            };
            summary.count(outcome, read.number, &progress);
        }
        summary.seconds = started.elapsed().as_secs_f64();
        progress.update(&summary);
    }
    reading.await.context("reading the file")??;
    summary.seconds = started.elapsed().as_secs_f64();
    progress.finish();
    summary.print(args.json)?;
    pool.close().await;
    Ok(if summary.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The file to read (standard input for `-`) and its format (given, or by its extension).
fn open_input(args: &ImportArgs) -> anyhow::Result<(Box<dyn Read + Send>, Format)> {
    let format = args.format.unwrap_or_else(|| {
        if args.file.extension().is_some_and(|e| e == "csv") {
            Format::Csv
        } else {
            Format::Jsonl
        }
    });
    let reader: Box<dyn Read + Send> = if args.file.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.file)
                .with_context(|| format!("cannot open {}", args.file.display()))?,
        )
    };
    Ok((reader, format))
}

impl Summary {
    /// Counts what became of one line; a failed one is reported with its number.
    fn count(&mut self, imported: Imported, number: u64, progress: &Progress) {
        match imported {
            Imported::Added { identities, .. } => {
                self.added += 1;
                self.identities_linked += identities as u64;
            }
            Imported::Unchanged { identities, .. } => {
                self.already_present += 1;
                self.identities_linked += identities as u64;
            }
            Imported::Failed(reason) => {
                self.failed += 1;
                progress.line_failed(number, &reason.message);
            }
        }
    }

    /// The closing line (or object, with `--json`).
    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string(self)?);
            return Ok(());
        }
        let linked = if self.identities_linked > 0 {
            format!(", identities linked {}", self.identities_linked)
        } else {
            String::new()
        };
        println!(
            "added {}, already present {}, failed {}{linked}",
            self.added, self.already_present, self.failed
        );
        Ok(())
    }
}

/// One line of the file: its number, and the account it describes or why it cannot be read.
struct Read1 {
    number: u64,
    line: Result<Line, String>,
}

fn read_all(
    reader: Box<dyn Read + Send>,
    format: Format,
    country: Option<CountryCode>,
    file: &Path,
    sender: tokio::sync::mpsc::Sender<Vec<Read1>>,
) -> anyhow::Result<()> {
    let mut chunk = Chunk {
        lines: Vec::with_capacity(CHUNK_LINES),
        locks: 0,
        sender,
    };
    let result = match format {
        Format::Jsonl => read_jsonl(reader, country.as_ref(), &mut chunk),
        Format::Csv => read_csv(reader, country.as_ref(), &mut chunk),
    };
    // What was read before a failure is still decided and reported.
    chunk.flush();
    result.with_context(|| format!("reading {}", file.display()))
}

/// The lines read and not sent yet; sent when the next line would take it past its line or
/// lock budget.
struct Chunk {
    lines: Vec<Read1>,
    locks: usize,
    sender: tokio::sync::mpsc::Sender<Vec<Read1>>,
}

impl Chunk {
    /// Adds a line; false when nobody takes chunks any more.
    fn push(&mut self, read: Read1) -> bool {
        let locks = read.line.as_ref().map_or(0, Line::locks);
        if !self.lines.is_empty()
            && (self.lines.len() >= CHUNK_LINES || self.locks + locks > bulk::CHUNK_LOCKS)
            && !self.flush()
        {
            return false;
        }
        self.locks += locks;
        self.lines.push(read);
        true
    }

    fn flush(&mut self) -> bool {
        self.locks = 0;
        if self.lines.is_empty() {
            return true;
        }
        self.sender
            .blocking_send(std::mem::take(&mut self.lines))
            .is_ok()
    }
}

/// The longest line read: a line is one account, and a longer one is refused without holding
/// it in memory.
const MAX_LINE_BYTES: usize = 64 * 1024;

fn read_jsonl(
    reader: Box<dyn Read + Send>,
    country: Option<&CountryCode>,
    chunk: &mut Chunk,
) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(1 << 16, reader);
    let mut number = 0u64;
    let mut bytes = Vec::new();
    loop {
        let Some(too_long) = read_line(&mut reader, &mut bytes)? else {
            return Ok(());
        };
        number += 1;
        let line = if too_long {
            Err(format!("longer than {MAX_LINE_BYTES} bytes"))
        } else {
            match std::str::from_utf8(&bytes) {
                Err(_) => Err("not UTF-8 text".to_owned()),
                Ok(text) => {
                    // Excel and PowerShell start UTF-8 files with a byte order mark.
                    let text = if number == 1 {
                        text.strip_prefix('\u{feff}').unwrap_or(text)
                    } else {
                        text
                    };
                    if text.trim().is_empty() {
                        continue;
                    }
                    serde_json::from_str::<AccountInput>(text)
                        .map_err(|e| format!("not a valid account: {e}"))
                        .and_then(|input| line_of(number, &input, country))
                }
            }
        };
        if !chunk.push(Read1 { number, line }) {
            return Ok(());
        }
    }
}

/// Reads one line (without its end) into `bytes`, keeping at most `MAX_LINE_BYTES` of it:
/// `None` at the end of the input, `Some(true)` when the line was longer.
fn read_line(reader: &mut impl BufRead, bytes: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    bytes.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(any.then_some(too_long));
        }
        any = true;
        let (part, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (&available[..at], Some(at + 1)),
            None => (available, None),
        };
        if bytes.len() + part.len() > MAX_LINE_BYTES {
            too_long = true;
        } else {
            bytes.extend_from_slice(part);
        }
        let used = done.unwrap_or(available.len());
        reader.consume(used);
        if done.is_some() {
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
            return Ok(Some(too_long));
        }
    }
}

fn read_csv(
    reader: Box<dyn Read + Send>,
    country: Option<&CountryCode>,
    chunk: &mut Chunk,
) -> std::io::Result<()> {
    let mut rows = csv::ReaderBuilder::new().flexible(true).from_reader(reader);
    let header = rows.byte_headers().map_err(csv_io)?.clone();
    let header = csv::StringRecord::from_byte_record(header)
        .map_err(|_| std::io::Error::other("the header is not UTF-8 text"))?;
    let mut row = csv::ByteRecord::new();
    loop {
        match rows.read_byte_record(&mut row) {
            Ok(false) => return Ok(()),
            Ok(true) => {}
            Err(e) => return Err(csv_io(e)),
        }
        let number = row.position().map_or(0, |p| p.line());
        let line = match csv::StringRecord::from_byte_record(row.clone()) {
            Err(_) => Err("not UTF-8 text".to_owned()),
            Ok(text) => {
                csv_input(&header, &text).and_then(|input| line_of(number, &input, country))
            }
        };
        if !chunk.push(Read1 { number, line }) {
            return Ok(());
        }
    }
}

fn csv_io(e: csv::Error) -> std::io::Error {
    match e.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => std::io::Error::other(format!("{other:?}")),
    }
}

fn line_of(
    number: u64,
    input: &AccountInput,
    country: Option<&CountryCode>,
) -> Result<Line, String> {
    let record = input.normalise(country).map_err(|e| e.to_string())?;
    let identities = input.ahead_identities().map_err(|e| e.to_string())?;
    Ok(Line {
        number,
        record,
        explicit_id: input.id.is_some(),
        identities,
    })
}

/// A text cell as `users export` wrote it: the `'` it put before a value a spreadsheet would run
/// as a formula (`'=...`, `'+...`), or before one starting with `'` (`''s-Hertogenbosch`), is
/// taken off; any other cell, such as one of a file written by hand (`'quoted`), is read as it
/// is.
pub(crate) fn unneutralise(cell: &str) -> &str {
    match cell.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) => rest,
        _ => cell,
    }
}

/// A CSV row as an account: empty cells are absent, `attributes` and `identities` hold JSON,
/// text cells lose the `'` an export put before them (see [`unneutralise`]).
fn csv_input(header: &csv::StringRecord, row: &csv::StringRecord) -> Result<AccountInput, String> {
    let mut object = Map::new();
    for (name, cell) in header.iter().zip(row.iter()) {
        if cell.is_empty() {
            continue;
        }
        let value = match name {
            "email_verified" | "phone_verified" | "protected" => match cell {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                other => return Err(format!("{name}: {other:?} is not true or false")),
            },
            "attributes" | "identities" => {
                serde_json::from_str(cell).map_err(|e| format!("{name}: not JSON ({e})"))?
            }
            _ => Value::String(unneutralise(cell).to_owned()),
        };
        object.insert(name.to_owned(), value);
    }
    if row.len() > header.len() {
        return Err(format!(
            "{} cells, the header has {}",
            row.len(),
            header.len()
        ));
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| format!("not a valid account: {e}"))
}

/// Progress on standard error: a bar on a terminal, a line every few seconds otherwise, nothing
/// with `--json` off a terminal.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    last: Instant,
}

impl Progress {
    fn new(json: bool) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            plain: !terminal && !json,
            last: Instant::now(),
        }
    }

    fn update(&mut self, s: &Summary) {
        let rate = s.lines as f64 / s.seconds.max(0.001);
        let text = format!(
            "{} lines read, {} added, {} already present, {} failed, {rate:.0} lines/s",
            s.lines, s.added, s.already_present, s.failed
        );
        if let Some(bar) = &self.bar {
            bar.set_message(text);
        } else if self.plain && self.last.elapsed() >= Duration::from_secs(5) {
            self.last = Instant::now();
            eprintln!("progress: {text}");
        }
    }

    fn line_failed(&self, number: u64, reason: &str) {
        let text = format!("line {number}: {reason}");
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
