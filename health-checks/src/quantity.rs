//! Kubernetes resource quantities (`8`, `8k`, `1e3`, `2Ki`, `1500m`) as whole numbers.

/// A quantity that is not a whole, non-negative number of units.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuantityError {
    /// Nothing but spaces.
    #[error("empty quantity")]
    Empty,
    /// Below zero.
    #[error("negative quantity")]
    Negative,
    /// No number where one belongs.
    #[error("{0:?} is not a number")]
    NotANumber(String),
    /// More than 2^128 - 1 units.
    #[error("{0:?} is too large")]
    TooLarge(String),
    /// An exponent that is not a whole number, or beyond ±38.
    #[error("{0:?} has a malformed or out-of-range exponent")]
    BadExponent(String),
    /// A suffix Kubernetes does not define.
    #[error("{text:?} has an unknown suffix {suffix:?} (expected m, k, M, G, T, P, E, Ki..Ei or an exponent)")]
    UnknownSuffix {
        /// The quantity.
        text: String,
        /// Its suffix.
        suffix: String,
    },
    /// A fraction of a unit.
    #[error("{0:?} is not a whole number")]
    NotWhole(String),
}

/// Parses a quantity that must be a whole, non-negative number of units
/// (e.g. a GPU count): `8`, `+8`, `8k` (8000), `1e3` (1000), `2Ki` (2048),
/// `1.5k` (1500), `3000m` (3). Fractions of a unit, negatives and overflow
/// are errors naming the problem.
pub fn parse_whole(text: &str) -> Result<u128, QuantityError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty);
    }
    if t.starts_with('-') {
        return Err(QuantityError::Negative);
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, suffix) = t.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(QuantityError::NotANumber(text.to_owned()));
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    // value = digits * 10^(exp10) * 2^(exp2), with digits an integer.
    let digits_text = format!("{int_part}{frac_part}");
    let digits: u128 = digits_text.parse().map_err(|_| QuantityError::TooLarge(text.to_owned()))?;
    let mut exp10: i64 = -i64::try_from(frac_part.len()).map_err(|_| QuantityError::TooLarge(text.to_owned()))?;
    let mut exp2: u32 = 0;
    match suffix {
        "" => {}
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => exp2 = 10,
        "Mi" => exp2 = 20,
        "Gi" => exp2 = 30,
        "Ti" => exp2 = 40,
        "Pi" => exp2 = 50,
        "Ei" => exp2 = 60,
        s if s.starts_with(['e', 'E']) => {
            let e: i64 = s[1..].parse().map_err(|_| QuantityError::BadExponent(text.to_owned()))?;
            if e.unsigned_abs() > 38 {
                return Err(QuantityError::BadExponent(text.to_owned()));
            }
            exp10 += e;
        }
        s => {
            return Err(QuantityError::UnknownSuffix { text: text.to_owned(), suffix: s.to_owned() });
        }
    }
    if digits == 0 {
        // Zero with any suffix ("0.000", "0e-3", "0Ki").
        return Ok(0);
    }
    let too_large = || QuantityError::TooLarge(text.to_owned());
    let mut value = digits.checked_mul(1u128.checked_shl(exp2).ok_or_else(too_large)?).ok_or_else(too_large)?;
    if exp10 >= 0 {
        let p = 10u128.checked_pow(u32::try_from(exp10).map_err(|_| too_large())?).ok_or_else(too_large)?;
        value = value.checked_mul(p).ok_or_else(too_large)?;
    } else {
        let p = 10u128.checked_pow(u32::try_from(-exp10).map_err(|_| too_large())?).ok_or_else(too_large)?;
        if value % p != 0 {
            return Err(QuantityError::NotWhole(text.to_owned()));
        }
        value /= p;
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::parse_whole;

    #[test]
    fn quantities() {
        let ok = [
            ("8", 8),
            (" 8 ", 8),
            ("+8", 8),
            ("0", 0),
            ("8k", 8000),
            ("1e3", 1000),
            ("1E3", 1000),
            ("2Ki", 2048),
            ("1.5k", 1500),
            ("3000m", 3),
            ("1Mi", 1_048_576),
            ("0.000", 0),
            ("0e-3", 0),
            ("0.0000000000000000000000000000000000000000000000", 0),
        ];
        for (t, want) in ok {
            assert_eq!(parse_whole(t), Ok(want), "{t}");
        }
        for bad in [
            "",
            "-1",
            "eight",
            "1.5",
            "1500m1",
            "8x",
            "1e",
            "1e-1",
            "..",
            "1.2.3",
            "99999999999999999999999999999999999999999",
            "1e99",
            "1Ei1",
            // Found by fuzzing: the exponent's absolute value overflowed.
            "1e-9223372036854775808",
            "1e9223372036854775807",
        ] {
            assert!(parse_whole(bad).is_err(), "{bad:?} should fail");
        }
    }
}
