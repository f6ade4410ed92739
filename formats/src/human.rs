//! The one formatter of numbers people read: significant figures, binary byte
//! units, thousands separators, scientific notation below 1e-3. The CLI, the
//! planner's report, `kiln eval` and the chart all print through it, so a
//! figure reads the same everywhere.
//!
//! What must stay true: no figure prints as all zeros unless it is zero
//! (`0.00 GB`, `0.000000`); bytes are in B/KiB/MiB/GiB/TiB (powers of 1024)
//! everywhere; the output depends only on the value (no locale).

/// `v` to `digits` significant figures: fixed point from 1e-3 up, scientific
/// below (`6.261e-6`), `0` for zero, `-` for NaN or an infinity.
pub fn sig(v: f64, digits: usize) -> String {
    let digits = digits.max(1);
    if !v.is_finite() {
        return "-".into();
    }
    if v == 0.0 {
        return "0".into();
    }
    if v.abs() < 1e-3 {
        return format!("{:.*e}", digits - 1, v);
    }
    let mag = v.abs().log10().floor() as i64;
    let decimals = (digits as i64 - 1 - mag).max(0) as usize;
    let s = format!("{v:.decimals$}");
    // Rounding can carry into a new digit (9.9996 -> 10.000): drop one decimal.
    let carried = s
        .parse::<f64>()
        .is_ok_and(|r| r.abs() >= 10f64.powi(mag as i32 + 1));
    if carried && decimals > 0 {
        format!("{v:.*}", decimals - 1)
    } else {
        s
    }
}

/// A measured figure (KL divergence, noise-to-signal, sensitivity): 4 significant figures.
pub fn num(v: f64) -> String {
    sig(v, 4)
}

/// `1234567` -> `1,234,567`.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A parameter count: `1737984` -> `1.74M`, `8030261248` -> `8.03B`, `512` -> `512`.
pub fn params(n: u64) -> String {
    let (v, suffix) = match n {
        n if n >= 1_000_000_000 => (n as f64 / 1e9, "B"),
        n if n >= 1_000_000 => (n as f64 / 1e6, "M"),
        n if n >= 1_000 => (n as f64 / 1e3, "K"),
        n => return n.to_string(),
    };
    format!("{}{suffix}", sig(v, 3))
}

const BYTE_UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];

/// A byte count in binary units, 3 significant figures: `512 B`, `954.7 KiB`
/// -> `955 KiB`, `1.18 MiB`, `4.58 GiB`.
pub fn bytes(b: u64) -> String {
    bytes_f(b as f64)
}

/// [`bytes`] of a fractional amount (a rate, an average).
pub fn bytes_f(b: f64) -> String {
    if !b.is_finite() {
        return "-".into();
    }
    let (v, u) = scaled(b);
    if u == 0 {
        format!("{} B", b.round() as i64)
    } else {
        format!("{} {}", sig(v, 3), BYTE_UNITS[u])
    }
}

/// `b` in its binary unit: the value and the unit's index in B, KiB, MiB, GiB, TiB.
fn scaled(b: f64) -> (f64, usize) {
    let mut v = b;
    let mut u = 0;
    while v.abs() >= 1024.0 && u < BYTE_UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    (v, u)
}

/// The binary unit a byte count is shown in, and its size: `(1 << 20, "MiB")`.
pub fn byte_unit(b: f64) -> (f64, &'static str) {
    let (_, u) = scaled(b);
    (1024f64.powi(u as i32), BYTE_UNITS[u])
}

/// A rate of bytes: `12.5 MiB/s`.
pub fn byte_rate(per_second: f64) -> String {
    format!("{}/s", bytes_f(per_second))
}

/// A duration: `0.42 s`, `63 s`, `7 min 03 s`, `1 h 02 min`.
pub fn seconds(s: f64) -> String {
    if !s.is_finite() || s < 0.0 {
        return "-".into();
    }
    if s < 60.0 {
        return format!("{} s", sig(s.max(0.01), 2));
    }
    let t = s.round() as u64;
    if t < 3600 {
        format!("{} min {:02} s", t / 60, t % 60)
    } else {
        format!("{} h {:02} min", t / 3600, (t % 3600) / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_figures_and_scientific_below_a_thousandth() {
        assert_eq!(sig(0.0, 4), "0");
        assert_eq!(sig(4.079e-6, 4), "4.079e-6");
        assert_eq!(sig(0.000999, 3), "9.99e-4");
        assert_eq!(sig(0.00123456, 4), "0.001235");
        assert_eq!(sig(1.0030, 4), "1.003");
        assert_eq!(sig(11696.7, 4), "11697");
        assert_eq!(sig(9.9996, 4), "10.00");
        assert_eq!(sig(-0.25, 2), "-0.25");
        assert_eq!(sig(f64::NAN, 4), "-");
        assert_eq!(num(0.01977), "0.01977");
    }

    #[test]
    fn counts_params_and_bytes() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_980_760_064), "1,980,760,064");
        assert_eq!(params(1_737_984), "1.74M");
        assert_eq!(params(134_515_008), "135M");
        assert_eq!(params(8_030_261_248), "8.03B");
        assert_eq!(params(512), "512");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(977_120), "954 KiB");
        assert_eq!(bytes(1_234_567), "1.18 MiB");
        assert_eq!(bytes(80_000_000_000), "74.5 GiB");
        assert_eq!(byte_rate(30_280_428.0), "28.9 MiB/s");
        assert_eq!(byte_unit(3e6), (1048576.0, "MiB"));
    }

    #[test]
    fn durations() {
        assert_eq!(seconds(0.4234), "0.42 s");
        assert_eq!(seconds(12.3), "12 s");
        assert_eq!(seconds(63.0), "1 min 03 s");
        assert_eq!(seconds(423.0), "7 min 03 s");
        assert_eq!(seconds(3720.0), "1 h 02 min");
    }
}
