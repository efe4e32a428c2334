//! `parlor export`: the history of chosen live rooms written to a new file,
//! as JSON Lines (each line a `message` frame exactly as the protocol sends
//! it: every byte of the text kept) or as a Markdown transcript for people
//! (a section per room, a heading per day, times in UTC, the text escaped
//! so that it reads as it was typed). One consistent snapshot of the
//! database (see [`Snapshot`]), taken while the server may keep running;
//! rows go from the database to the file one at a time.
//!
//! DEST is one file for both formats: room names may hold characters no
//! file name can, and one file is one thing to move.

use std::fmt;
use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::str::FromStr;

use crate::error::Error;
use crate::protocol::{ChatMessage, NameKey, PageMessage};
use crate::store::{Snapshot, SnapshotRoom};

/// How an export is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportFormat {
    /// One JSON object per line: the `message` frame of the protocol.
    #[default]
    JsonLines,
    /// A transcript for people.
    Markdown,
}

impl FromStr for ExportFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<ExportFormat, String> {
        match s {
            "jsonl" => Ok(ExportFormat::JsonLines),
            "markdown" | "md" => Ok(ExportFormat::Markdown),
            other => Err(format!("the format is jsonl or markdown, not {other:?}")),
        }
    }
}

/// A calendar day in UTC, written `YYYY-MM-DD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcDay {
    /// Days since 1970-01-01.
    days: i64,
}

impl UtcDay {
    /// Where the day begins, in ms since the epoch.
    pub fn start_ms(self) -> i64 {
        self.days.saturating_mul(MS_PER_DAY)
    }

    fn of_ms(ms: i64) -> UtcDay {
        UtcDay {
            days: ms.div_euclid(MS_PER_DAY),
        }
    }
}

impl FromStr for UtcDay {
    type Err = String;

    fn from_str(s: &str) -> Result<UtcDay, String> {
        let bad = || format!("a date is written like 2025-11-25 (a day in UTC), not {s:?}");
        let parts: Vec<&str> = s.split('-').collect();
        let [year, month, day] = parts[..] else {
            return Err(bad());
        };
        let digits = |part: &str, len: usize| {
            (part.len() == len && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<i64>().ok())
                .flatten()
        };
        let (Some(y), Some(m), Some(d)) = (digits(year, 4), digits(month, 2), digits(day, 2))
        else {
            return Err(bad());
        };
        if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
            return Err(bad());
        }
        let parsed = UtcDay {
            days: days_from_civil(y, m, d),
        };
        // 2025-02-30 would land on March 2nd: refuse days a month lacks.
        if civil_from_days(parsed.days) != (y, m, d) {
            return Err(bad());
        }
        Ok(parsed)
    }
}

impl fmt::Display for UtcDay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = civil_from_days(self.days);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

const MS_PER_DAY: i64 = 86_400_000;

// Calendar arithmetic by hand rather than a date crate: two well-known
// conversions (Howard Hinnant's `days_from_civil` and `civil_from_days`,
// proleptic Gregorian calendar) are all an export needs.

/// Days since 1970-01-01 of a year, month (1–12) and day (1–31).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The year, month and day of a count of days since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// What to export.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportOptions {
    /// Rooms by name (ignoring case), in this order; empty: every live room,
    /// sorted by name.
    pub rooms: Vec<String>,
    /// How to write them.
    pub format: ExportFormat,
    /// Only messages from the start of this day on.
    pub since: Option<UtcDay>,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Rooms written.
    pub rooms: usize,
    /// Messages written.
    pub messages: u64,
}

/// Writes the history `options` choose from the database `db` to a new file
/// `dest` (mode 0600: history is private), which must not exist. On failure
/// nothing is left at `dest`.
pub fn write(db: &Path, dest: &Path, options: &ExportOptions) -> Result<ExportSummary, Error> {
    let snapshot = Snapshot::open(db)?;
    let rooms = choose_rooms(db, snapshot.live_rooms()?, &options.rooms)?;
    let file = create_new(dest)?;
    let written = write_rooms(&snapshot, &rooms, options, BufWriter::new(file), dest);
    if written.is_err() {
        let _ = fs::remove_file(dest);
    }
    written
}

/// The live rooms asked for, in the order asked (each once), or all.
fn choose_rooms(
    db: &Path,
    live: Vec<SnapshotRoom>,
    asked: &[String],
) -> Result<Vec<SnapshotRoom>, Error> {
    if asked.is_empty() {
        return Ok(live);
    }
    let mut chosen: Vec<SnapshotRoom> = Vec::with_capacity(asked.len());
    for name in asked {
        let key = NameKey::of(name.trim());
        let Some(room) = live.iter().find(|r| r.key == key) else {
            return Err(Error::Database {
                path: db.to_path_buf(),
                message: format!("it has no room named {:?}", name.trim()),
                source: None,
            });
        };
        if !chosen.iter().any(|r| r.id == room.id) {
            chosen.push(room.clone());
        }
    }
    Ok(chosen)
}

fn export_error(dest: &Path, message: String, source: Option<std::io::Error>) -> Error {
    Error::Export {
        path: dest.to_path_buf(),
        message,
        source,
    }
}

/// Creates `dest`, mode 0600, failing if anything is there already.
fn create_new(dest: &Path) -> Result<fs::File, Error> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(dest).map_err(|e| {
        let message = if e.kind() == std::io::ErrorKind::AlreadyExists {
            "it already exists; choose a new file name".to_string()
        } else {
            format!("cannot create it: {e}")
        };
        export_error(dest, message, Some(e))
    })
}

fn write_rooms(
    snapshot: &Snapshot,
    rooms: &[SnapshotRoom],
    options: &ExportOptions,
    mut out: BufWriter<fs::File>,
    dest: &Path,
) -> Result<ExportSummary, Error> {
    let io = |e: std::io::Error| export_error(dest, format!("cannot write it: {e}"), Some(e));
    let since = options.since.map(UtcDay::start_ms);
    let mut messages = 0;
    for (n, room) in rooms.iter().enumerate() {
        messages += match options.format {
            ExportFormat::JsonLines => snapshot.messages(room, since, |m| {
                serde_json::to_writer(&mut out, &PageMessage(m))
                    .map_err(std::io::Error::from)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(io)
            })?,
            ExportFormat::Markdown => {
                let mut transcript = Transcript::default();
                let heading = if n == 0 { "# " } else { "\n# " };
                out.write_all(format!("{heading}{}\n", escape(&room.name, false)).as_bytes())
                    .map_err(io)?;
                let count = snapshot.messages(room, since, |m| {
                    out.write_all(transcript.line(&m).as_bytes()).map_err(io)
                })?;
                if count == 0 {
                    let none = match options.since {
                        Some(day) => format!("\n*No messages since {day}.*\n"),
                        None => "\n*No messages.*\n".to_string(),
                    };
                    out.write_all(none.as_bytes()).map_err(io)?;
                }
                count
            }
        };
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(ExportSummary {
        rooms: rooms.len(),
        messages,
    })
}

/// A room's transcript as it is written: the day of the last message, so a
/// heading comes before the first message of each day.
#[derive(Default)]
struct Transcript {
    day: Option<UtcDay>,
}

impl Transcript {
    /// The Markdown for one message (and its day's heading if it is the
    /// day's first): a list item `- 14:03 **alice**: text`, each further
    /// line of the text indented under it after a hard line break.
    fn line(&mut self, m: &ChatMessage) -> String {
        let mut md = String::new();
        let day = UtcDay::of_ms(m.ts);
        if self.day != Some(day) {
            md.push_str(&format!("\n## {day}\n\n"));
            self.day = Some(day);
        }
        let minute = m.ts.rem_euclid(MS_PER_DAY) / 60_000;
        md.push_str(&format!(
            "- {:02}:{:02} **{}**: ",
            minute / 60,
            minute % 60,
            escape(&m.from, false)
        ));
        for (i, line) in m.text.split('\n').enumerate() {
            if i > 0 {
                md.push_str("\\\n  ");
            }
            md.push_str(&escape(line, i > 0));
        }
        md.push('\n');
        md
    }
}

/// One line of text escaped for Markdown (CommonMark with GitHub's tables
/// and strikethrough), so that it shows as typed and nothing in it becomes
/// a link, an image, HTML, emphasis or code. With `line_start`, also what
/// would begin a heading, quote, list or rule at the start of a line.
fn escape(text: &str, line_start: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let body = if line_start {
        let trimmed = text.trim_start_matches([' ', '\t']);
        out.push_str(&text[..text.len() - trimmed.len()]);
        let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
        if let Some(c) = trimmed.chars().next()
            && matches!(c, '#' | '-' | '+' | '=')
        {
            out.push('\\');
        } else if digits > 0 && matches!(trimmed.as_bytes().get(digits), Some(b'.' | b')')) {
            out.push_str(&trimmed[..digits]);
            out.push('\\');
            out.push_str(&trimmed[digits..=digits]);
            return escape_inline(&trimmed[digits + 1..], out);
        }
        trimmed
    } else {
        text
    };
    escape_inline(body, out)
}

fn escape_inline(text: &str, mut out: String) -> String {
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '&' | '~' | '|'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Seq;

    #[test]
    fn days_are_read_and_written_as_utc_dates() {
        let day: UtcDay = "2025-11-25".parse().unwrap();
        assert_eq!(day.start_ms(), 1_764_028_800_000);
        assert_eq!(day.to_string(), "2025-11-25");
        assert_eq!("1970-01-01".parse::<UtcDay>().unwrap().start_ms(), 0);
        assert_eq!(
            "2024-02-29".parse::<UtcDay>().unwrap().start_ms(),
            1_709_164_800_000
        );
        assert_eq!(
            UtcDay::of_ms(1_764_028_800_000 - 1).to_string(),
            "2025-11-24"
        );
        assert_eq!(UtcDay::of_ms(-1).to_string(), "1969-12-31");
        // Every day over four centuries comes back as itself.
        for days in -80_000..80_000 {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        for bad in [
            "2025-02-29",
            "2025-13-01",
            "2025-00-10",
            "2025-04-31",
            "25-11-25",
            "2025-11-5",
            "2025/11/25",
            "2025-11-25T00:00",
            "+2025-11-25",
            "",
        ] {
            let error = bad.parse::<UtcDay>().unwrap_err();
            assert!(error.contains("like 2025-11-25"), "{bad}: {error}");
        }
    }

    #[test]
    fn formats_by_name() {
        assert_eq!("jsonl".parse(), Ok(ExportFormat::JsonLines));
        assert_eq!("markdown".parse(), Ok(ExportFormat::Markdown));
        assert_eq!("md".parse(), Ok(ExportFormat::Markdown));
        assert!(
            "json"
                .parse::<ExportFormat>()
                .unwrap_err()
                .contains("jsonl or markdown")
        );
    }

    #[test]
    fn markdown_shows_text_as_typed() {
        assert_eq!(
            escape("plain words, 🎉 and ünïcode.", false),
            "plain words, 🎉 and ünïcode."
        );
        assert_eq!(
            escape("<b>hi</b> & *x* _y_ `z` [a](b) ~~s~~ | \\", false),
            "\\<b\\>hi\\</b\\> \\& \\*x\\* \\_y\\_ \\`z\\` \\[a\\](b) \\~\\~s\\~\\~ \\| \\\\"
        );
        // Only at the start of a line: headings, lists, rules.
        assert_eq!(escape("# not a heading", false), "# not a heading");
        assert_eq!(escape("# heading", true), "\\# heading");
        assert_eq!(escape("  - item", true), "  \\- item");
        assert_eq!(escape("+ item", true), "\\+ item");
        assert_eq!(escape("===", true), "\\===");
        assert_eq!(escape("12. item", true), "12\\. item");
        assert_eq!(escape("3) <x>", true), "3\\) \\<x\\>");
        assert_eq!(escape("2025 was", true), "2025 was");
        assert_eq!(escape("", true), "");
    }

    #[test]
    fn a_transcript_has_a_heading_per_day_and_an_item_per_message() {
        let message = |seq, ts, text: &str| ChatMessage {
            room: "general".into(),
            seq: Seq(seq),
            id: format!("m{seq}"),
            from: "a_lice".into(),
            text: text.into(),
            ts,
            edited_at: None,
            deleted: false,
            mentions: Vec::new(),
        };
        let day = "2025-11-25".parse::<UtcDay>().unwrap().start_ms();
        let mut t = Transcript::default();
        assert_eq!(
            t.line(&message(1, day + 14 * 3_600_000 + 3 * 60_000, "hello")),
            "\n## 2025-11-25\n\n- 14:03 **a\\_lice**: hello\n"
        );
        assert_eq!(
            t.line(&message(2, day + MS_PER_DAY - 1, "two\n- lines\n\nend")),
            "- 23:59 **a\\_lice**: two\\\n  \\- lines\\\n  \\\n  end\n"
        );
        assert_eq!(
            t.line(&message(3, day + MS_PER_DAY, "next day")),
            "\n## 2025-11-26\n\n- 00:00 **a\\_lice**: next day\n"
        );
    }
}
