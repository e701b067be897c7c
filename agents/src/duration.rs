//! ISO 8601 durations as FIS writes them: `PT30S`, `PT5M`, `PT1H30M`, `P1DT2H`, `PT0.5S`.

use std::time::Duration;

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not of the form `PnDTnHnMnS`.
    #[error("`{0}` is not an ISO 8601 duration; write e.g. PT30S, PT5M or PT1H30M")]
    Syntax(String),
    /// Years and months have no fixed length.
    #[error("`{0}` uses years or months, which have no fixed length; use days (P1D) or hours (PT24H)")]
    Calendar(String),
}

/// Parses an ISO 8601 duration made of weeks, days, hours, minutes and (fractional) seconds.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_string());
    let rest = text.strip_prefix('P').ok_or_else(syntax)?;
    if rest.is_empty() {
        return Err(syntax());
    }
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return Err(syntax()),
        Some((d, t)) => (d, t),
        None => (rest, ""),
    };
    let mut millis: u128 = 0;
    let mut add = |number: &str, unit: char, in_time: bool| -> Result<(), DurationError> {
        let unit_ms: u128 = match (unit, in_time) {
            ('W', false) => 7 * 86_400_000,
            ('D', false) => 86_400_000,
            ('Y' | 'M', false) => return Err(DurationError::Calendar(text.to_string())),
            ('H', true) => 3_600_000,
            ('M', true) => 60_000,
            ('S', true) => 1_000,
            _ => return Err(syntax()),
        };
        let (int, frac) = number.split_once(['.', ',']).unwrap_or((number, ""));
        if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
            return Err(syntax());
        }
        if !frac.bytes().all(|b| b.is_ascii_digit()) || (!frac.is_empty() && unit != 'S') {
            return Err(syntax());
        }
        let whole: u128 = int.parse().map_err(|_| syntax())?;
        let frac_ms: u128 = format!("{frac:0<3}")[..3].parse().unwrap_or(0);
        millis = whole
            .checked_mul(unit_ms)
            .and_then(|m| m.checked_add(if unit == 'S' { frac_ms } else { 0 }))
            .and_then(|m| millis.checked_add(m))
            .ok_or_else(syntax)?;
        Ok(())
    };
    for (part, in_time) in [(date, false), (time, true)] {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' || c == ',' {
                number.push(c);
            } else if number.is_empty() {
                return Err(syntax());
            } else {
                add(&number, c, in_time)?;
                number.clear();
            }
        }
        if !number.is_empty() {
            return Err(syntax());
        }
    }
    u64::try_from(millis).map(Duration::from_millis).map_err(|_| syntax())
}

/// Formats a duration back as ISO 8601, the shortest exact form (`PT1H30M`, `PT0.5S`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "PT0S".into();
    }
    let (h, m, s, frac) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    let mut out = String::from("PT");
    if h > 0 {
        out += &format!("{h}H");
    }
    if m > 0 {
        out += &format!("{m}M");
    }
    if s > 0 || frac > 0 {
        if frac > 0 {
            let f = format!("{frac:03}");
            out += &format!("{s}.{}S", f.trim_end_matches('0'));
        } else {
            out += &format!("{s}S");
        }
    }
    out
}

/// Formats a duration for people: `1h30m`, `45s`, `250ms`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out += &format!("{h}h");
    }
    if m > 0 {
        out += &format!("{m}m");
    }
    if s > 0 || out.is_empty() {
        if h == 0 && m == 0 && ms % 1000 != 0 {
            out += &format!("{:.1}s", ms as f64 / 1000.0);
        } else {
            out += &format!("{s}s");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fis_durations() {
        let cases = [
            ("PT30S", 30_000),
            ("PT5M", 300_000),
            ("PT1H30M", 5_400_000),
            ("P1DT2H", 93_600_000),
            ("PT0.5S", 500),
            ("PT1,25S", 1_250),
            ("P1W", 604_800_000),
            ("PT0S", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse(text), Ok(Duration::from_millis(ms)), "{text}");
        }
    }

    #[test]
    fn refuses_malformed_durations() {
        for text in [
            "", "P", "PT", "30S", "PT5", "PTS", "PT1.5M", "PT5X", "P5H", "pt5m", "PT-5S", "PT5M5",
        ] {
            assert!(matches!(parse(text), Err(DurationError::Syntax(_))), "{text}");
        }
        assert!(matches!(parse("P1M"), Err(DurationError::Calendar(_))));
        assert!(matches!(parse("P1Y"), Err(DurationError::Calendar(_))));
    }

    #[test]
    fn formats_round_trip() {
        for text in ["PT30S", "PT5M", "PT1H30M", "PT0.5S", "PT12H", "PT1M0.25S"] {
            assert_eq!(format(parse(text).unwrap()), text);
        }
    }

    #[test]
    fn humanizes() {
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(5400)), "1h30m");
    }
}
