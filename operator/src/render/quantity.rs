//! Kubernetes quantities (`512Mi`, `10Gi`, `1.5G`) as byte counts, for the runtime config.

/// Bytes in a quantity, or `None` when it does not parse. The API server has already checked
/// the syntax (CEL `isQuantity`), so `None` means a suffix this function does not know.
pub fn bytes(quantity: &str) -> Option<u64> {
    let q = quantity.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        _ => return None,
    };
    let value = number * factor;
    (value.is_finite() && value >= 0.0 && value < u64::MAX as f64).then(|| value.round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn binary_decimal_and_plain_quantities() {
        assert_eq!(super::bytes("25Mi"), Some(25 * 1024 * 1024));
        assert_eq!(super::bytes("1Gi"), Some(1 << 30));
        assert_eq!(super::bytes("1.5G"), Some(1_500_000_000));
        assert_eq!(super::bytes("4096"), Some(4096));
        assert_eq!(super::bytes("10x"), None);
    }
}
