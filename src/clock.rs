//! Time as statushub stores and shows it: Unix milliseconds, formatted as
//! fixed-width RFC 3339.

/// Formats Unix milliseconds as RFC 3339 UTC with exactly three fractional
/// digits (`2026-11-28T12:00:00.000Z`): fixed width, so these strings sort
/// in time order.
pub fn format_ms(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    let nanos = i128::from(ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|at| at.format(FORMAT).ok())
        .unwrap_or_else(|| ms.to_string())
}

/// Returns the current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    let nanos = time::OffsetDateTime::now_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::format_ms;

    #[test]
    fn timestamps_have_fixed_width_and_sort_in_time_order() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_700_000_000_500), "2023-11-14T22:13:20.500Z");
        let mut texts = [format_ms(1_000), format_ms(999), format_ms(1_500)];
        texts.sort();
        assert_eq!(texts, [format_ms(999), format_ms(1_000), format_ms(1_500)]);
    }
}
