//! Small text helpers shared by the terminal UI and `--follow`: clocks, durations, load
//! figures, short names, padding and wrapping. Pure functions, no I/O.

use std::time::{SystemTime, UNIX_EPOCH};

use onehop_overlay::status::Kind;

/// Milliseconds since the Unix epoch, now (the one clock of the program; state and output
/// functions take the time as an argument).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `(year, month, day)` of a day counted from 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Howard Hinnant's algorithm: shift the epoch to 0000-03-01, count 400-year eras.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
pub fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// RFC 3339 UTC timestamp with milliseconds, `2025-06-01T12:00:00.123Z`.
pub fn timestamp(ms: u64) -> String {
    let (y, mo, d) = civil_from_days((ms / 86_400_000) as i64);
    format!("{y:04}-{mo:02}-{d:02}T{}.{:03}Z", clock(ms), ms % 1000)
}

/// A duration in milliseconds as an operator reads it: `42s`, `5m07s`, `3h05m`, `2d04h`.
pub fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s / 60) % 60),
        _ => format!("{}d{:02}h", s / 86_400, (s / 3600) % 24),
    }
}

/// A load figure, short: `3`, `12.5`, `1.2k`, `3.4M`.
pub fn figure(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// A short name for a well-known load figure (for narrow screens); others as they are.
pub fn short_figure(name: &str) -> &str {
    match name {
        "bindings" => "bind",
        "relay_sessions" => "relay",
        "packets_per_s" => "pps",
        "connections" => "conn",
        other => other,
    }
}

/// A short name for a well-known role (for narrow screens); others as they are.
pub fn short_role(role: &str) -> &str {
    match role {
        "sip_proxy" => "proxy",
        "registrar" => "reg",
        "media_relay" => "relay",
        other => other,
    }
}

/// A short name for a kind (for narrow screens).
pub fn short_kind(kind: Kind) -> &'static str {
    match kind {
        Kind::Eventserver => "es",
        Kind::Manager => "mgr",
        Kind::Dns => "dns",
        Kind::Node => "node",
        Kind::Monitor => "mon",
        Kind::Admin => "admin",
    }
}

/// `text` cut or padded with spaces to exactly `width` characters; a cut ends in `…`.
pub fn fit(text: &str, width: usize) -> String {
    let n = text.chars().count();
    if n <= width {
        let mut s = String::with_capacity(width);
        s.push_str(text);
        s.extend(std::iter::repeat_n(' ', width - n));
        s
    } else if width == 0 {
        String::new()
    } else {
        let mut s: String = text.chars().take(width - 1).collect();
        s.push('…');
        s
    }
}

/// Breaks `text` into rows of at most `width` characters, at spaces where possible (a word
/// longer than a row is cut). Always at least one row.
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut rows = Vec::new();
    let mut row = String::new();
    let mut len = 0;
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        loop {
            let sep = usize::from(len > 0);
            if len + sep + word.len() <= width {
                if sep == 1 {
                    row.push(' ');
                }
                row.extend(word.iter());
                len += sep + word.len();
                break;
            }
            if len > 0 {
                rows.push(std::mem::take(&mut row));
                len = 0;
                continue;
            }
            // A word longer than a whole row.
            let rest = word.split_off(width);
            rows.push(word.iter().collect());
            word = rest;
        }
    }
    rows.push(row);
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        // 2024-02-29 12:34:56.789 UTC (a leap day).
        assert_eq!(timestamp(1_709_210_096_789), "2024-02-29T12:34:56.789Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(clock(1_709_210_096_789), "12:34:56");
    }

    #[test]
    fn durations_read_like_an_operator_writes_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(65_000), "1m05s");
        assert_eq!(duration(3_725_000), "1h02m");
        assert_eq!(duration(2 * 86_400_000 + 4 * 3_600_000), "2d04h");
    }

    #[test]
    fn figures_are_short() {
        assert_eq!(figure(3.0), "3");
        assert_eq!(figure(12.5), "12.5");
        assert_eq!(figure(12_345.0), "12.3k");
        assert_eq!(figure(3_400_000.0), "3.4M");
    }

    #[test]
    fn fit_pads_and_cuts() {
        assert_eq!(fit("node1", 7), "node1  ");
        assert_eq!(fit("media_relay", 6), "media…");
        assert_eq!(fit("x", 0), "");
    }

    #[test]
    fn wrap_breaks_at_spaces_and_cuts_long_words() {
        assert_eq!(wrap("node3 is gone", 8), vec!["node3 is", "gone"]);
        assert_eq!(wrap("abcdefghij", 4), vec!["abcd", "efgh", "ij"]);
        assert_eq!(wrap("", 4), vec![""]);
        assert_eq!(wrap("a b", 10), vec!["a b"]);
    }
}
