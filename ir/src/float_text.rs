//! Numbers as text: the one spelling of a float that every printer of the IR uses (graph ops,
//! the kernel IR, the rewrite language), so that printed constants read back exactly.

/// Formats a float so that it reads back to the same value and integers stay short (`2`,
/// `0.5`, `1e-6`).
pub fn format_float(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::format_float;

    #[test]
    fn integers_stay_short_and_fractions_round_trip() {
        assert_eq!(format_float(2.0), "2");
        assert_eq!(format_float(-3.0), "-3");
        assert_eq!(format_float(0.5), "0.5");
        assert_eq!(format_float(1e-6), "1e-6");
        for v in [0.1, 1.0 / 3.0, 6.02e23, f64::MIN_POSITIVE] {
            assert_eq!(format_float(v).parse::<f64>(), Ok(v), "{v:?}");
        }
        assert_eq!(format_float(f64::INFINITY), "inf");
    }
}
