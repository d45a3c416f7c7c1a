//! `parse_rate`: human bandwidth strings to bytes per second.

/// Parses a bandwidth such as `"20mbit"`, `"2.5MB"`, `"100kbit"` or
/// `"1MiB"` into bytes per second.
///
/// Units are case-insensitive and an optional `/s` may follow. Bits must be
/// spelled `bit` (`bit`, `kbit`, `mbit`, `gbit`, `kibit`, `mibit`, `gibit`:
/// divided by 8); everything else counts bytes (`""`/`b`, `k`/`kb`,
/// `m`/`mb`, `g`/`gb`, `t`/`tb` in powers of 1000; `kib`, `mib`, `gib`,
/// `tib` in powers of 1024). The result is rounded and must be at least
/// 1 byte per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!(
            "invalid rate {s:?}: expected a number then a unit, e.g. 20mbit"
        ));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid rate {s:?}: bad number {num:?}"))?;
    const K: f64 = 1000.0;
    const KI: f64 = 1024.0;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => K,
        "m" | "mb" => K * K,
        "g" | "gb" => K * K * K,
        "t" | "tb" => K * K * K * K,
        "ki" | "kib" => KI,
        "mi" | "mib" => KI * KI,
        "gi" | "gib" => KI * KI * KI,
        "ti" | "tib" => KI * KI * KI * KI,
        "bit" | "bits" => 1.0 / 8.0,
        "kbit" | "kbits" => K / 8.0,
        "mbit" | "mbits" => K * K / 8.0,
        "gbit" | "gbits" => K * K * K / 8.0,
        "kibit" => KI / 8.0,
        "mibit" => KI * KI / 8.0,
        "gibit" => KI * KI * KI / 8.0,
        other => {
            return Err(format!(
                "invalid rate {s:?}: unknown unit {other:?} (use e.g. kbit, mbit, KB, MB, KiB, MiB)"
            ))
        }
    };
    let bytes = (value * mult).round();
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!(
            "invalid rate {s:?}: must be at least 1 byte per second"
        ));
    }
    if bytes >= u64::MAX as f64 {
        return Err(format!("invalid rate {s:?}: too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20mbit"), Ok(2_500_000));
        assert_eq!(parse_rate("2.5MB"), Ok(2_500_000));
        assert_eq!(parse_rate("100kbit"), Ok(12_500));
        assert_eq!(parse_rate("1MiB"), Ok(1_048_576));
        assert_eq!(parse_rate("8mbit/s"), Ok(1_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("512"), Ok(512));
        assert_eq!(parse_rate(" 64 KiB "), Ok(65_536));
        assert_eq!(parse_rate("10k"), Ok(10_000));
        assert_eq!(parse_rate("1.5kib"), Ok(1536));
        for bad in [
            "",
            "mbit",
            "0",
            "0.1",
            "1.2.3MB",
            "5 furlongs",
            "-1MB",
            "1e3MB",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?}");
        }
    }
}
