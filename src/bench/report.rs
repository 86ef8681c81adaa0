//! The benchmark's figures and how they are shown: one Markdown table for
//! people, the same figures as JSON for scripts, and the machine they were
//! measured on.
//!
//! A [`Figure`] carries its measured value, its target from issue 5 (with
//! whether it was met) and, where the machine has a raw limit to compare
//! with, that limit and the ratio. The ratio is always "the share of the
//! machine's limit achieved": measured/limit for rates, limit/measured for
//! durations, so 1.0 means the daemon adds nothing on top of the raw cost.
//! This module measures nothing.

use serde_json::{Value, json};
use std::fmt::Write as _;

/// How a value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    PerSecond,
    Millis,
    Seconds,
    MiB,
    Percent,
    Count,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::PerSecond => "per_second",
            Unit::Millis => "ms",
            Unit::Seconds => "s",
            Unit::MiB => "MiB",
            Unit::Percent => "percent",
            Unit::Count => "count",
        }
    }

    pub fn show(self, value: f64) -> String {
        match self {
            Unit::PerSecond => format!("{}/s", thousands(value)),
            Unit::Millis if value < 10.0 => format!("{value:.2} ms"),
            Unit::Millis => format!("{value:.1} ms"),
            Unit::Seconds if value < 1.0 => format!("{value:.3} s"),
            Unit::Seconds => format!("{value:.2} s"),
            Unit::MiB => format!("{value:.1} MiB"),
            Unit::Percent => format!("{value:.2}%"),
            Unit::Count => thousands(value),
        }
    }
}

/// A whole number with thousands separators: 23456.7 → "23,457".
pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let rounded = value.round();
    let digits = format!("{:.0}", rounded.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// A bound from the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Target {
    /// Met when `measured >= bound`.
    pub fn at_least(measured: f64, bound: f64, unit: Unit) -> Target {
        Target {
            text: format!("≥ {}", unit.show(bound)),
            met: measured >= bound,
        }
    }

    /// Met when `measured <= bound`.
    pub fn at_most(measured: f64, bound: f64, unit: Unit) -> Target {
        Target {
            text: format!("≤ {}", unit.show(bound)),
            met: measured <= bound,
        }
    }
}

/// The machine's raw capability a figure is compared with.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub text: String,
    /// The share of the limit achieved, ideally close to 1.
    pub ratio: f64,
}

impl Limit {
    /// For rates: `measured / limit`.
    pub fn rate(measured: f64, limit: f64, what: &str) -> Limit {
        Limit {
            text: format!("{} ({what})", Unit::PerSecond.show(limit)),
            ratio: ratio(measured, limit),
        }
    }

    /// For durations: `limit / measured`, the best possible over the real.
    pub fn duration(measured: f64, limit: f64, unit: Unit, what: &str) -> Limit {
        Limit {
            text: format!("{} ({what})", unit.show(limit)),
            ratio: ratio(limit, measured),
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// A stable name for scripts, such as `enqueue_16_connections`.
    pub id: &'static str,
    /// What it is, for people.
    pub name: String,
    pub value: f64,
    pub unit: Unit,
    pub target: Option<Target>,
    pub limit: Option<Limit>,
}

impl Figure {
    pub fn new(id: &'static str, name: impl Into<String>, value: f64, unit: Unit) -> Figure {
        Figure {
            id,
            name: name.into(),
            value,
            unit,
            target: None,
            limit: None,
        }
    }

    pub fn target(mut self, target: Target) -> Figure {
        self.target = Some(target);
        self
    }

    pub fn limit(mut self, limit: Limit) -> Figure {
        self.limit = Some(limit);
        self
    }

    fn verdict(&self) -> &'static str {
        match &self.target {
            Some(t) if t.met => "met",
            Some(_) => "MISSED",
            None => "",
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "value": finite(self.value),
            "unit": self.unit.name(),
            "target": self.target.as_ref().map(|t| &t.text),
            "met": self.target.as_ref().map(|t| t.met),
            "limit": self.limit.as_ref().map(|l| &l.text),
            "ratio": self.limit.as_ref().map(|l| finite(l.ratio)),
        })
    }
}

/// JSON has no NaN or infinity.
fn finite(value: f64) -> Option<f64> {
    value.is_finite().then_some(value)
}

/// What the figures were measured on.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub cpus: usize,
    pub model: String,
    pub ram_gib: f64,
    /// The filesystem type under the temporary directory (fsync costs
    /// nothing on tmpfs, which would flatter every durable figure).
    pub filesystem: String,
}

impl Machine {
    pub fn describe(&self) -> String {
        format!(
            "{} CPU(s), {}, {:.1} GiB RAM; temporary directory on {}",
            self.cpus, self.model, self.ram_gib, self.filesystem
        )
    }

    pub fn to_json(&self) -> Value {
        json!({
            "cpus": self.cpus,
            "model": self.model,
            "ram_gib": (self.ram_gib * 10.0).round() / 10.0,
            "filesystem": self.filesystem,
        })
    }
}

/// The figures as one Markdown table.
pub fn table(figures: &[Figure]) -> String {
    let header = [
        "Figure",
        "Measured",
        "Target",
        "Limit on this machine",
        "Ratio",
        "",
    ];
    let rows: Vec<[String; 6]> = figures
        .iter()
        .map(|f| {
            [
                f.name.clone(),
                f.unit.show(f.value),
                f.target
                    .as_ref()
                    .map(|t| t.text.clone())
                    .unwrap_or_default(),
                f.limit.as_ref().map(|l| l.text.clone()).unwrap_or_default(),
                f.limit
                    .as_ref()
                    .filter(|l| l.ratio.is_finite())
                    .map(|l| format!("{:.2}", l.ratio))
                    .unwrap_or_default(),
                f.verdict().to_owned(),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        out.push('|');
        for (cell, w) in cells.iter().zip(widths) {
            let pad = w - cell.chars().count();
            let _ = write!(out, " {cell}{} |", " ".repeat(pad));
        }
        out.push('\n');
    };
    line(&mut out, &header.map(str::to_owned));
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut out, &rule);
    for row in &rows {
        line(&mut out, row);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-4321.0), "-4,321");
    }

    #[test]
    fn ratios_are_shares_of_the_limit() {
        assert!((Limit::rate(50.0, 100.0, "x").ratio - 0.5).abs() < 1e-9);
        assert!((Limit::duration(2.0, 1.0, Unit::Seconds, "x").ratio - 0.5).abs() < 1e-9);
        assert!(Limit::rate(1.0, 0.0, "x").ratio.is_nan());
    }

    #[test]
    fn targets_say_whether_they_were_met() {
        assert!(Target::at_least(10.0, 10.0, Unit::PerSecond).met);
        assert!(!Target::at_most(11.0, 10.0, Unit::Millis).met);
    }

    #[test]
    fn the_table_has_a_row_per_figure() {
        let figures = vec![
            Figure::new("a", "A figure", 12_345.0, Unit::PerSecond).target(Target::at_least(
                12_345.0,
                10_000.0,
                Unit::PerSecond,
            )),
            Figure::new("b", "B", 1.5, Unit::Millis),
        ];
        let text = table(&figures);
        assert_eq!(text.lines().count(), 4);
        assert!(
            text.contains("| A figure | 12,345/s | ≥ 10,000/s |"),
            "{text}"
        );
        assert!(text.contains("met"));
    }
}
