//! Estimated cost: USD per million tokens, by model-name prefix.
//!
//! The built-in table holds Anthropic's public list prices (standard context,
//! 5-minute cache writes). The config file can change or add entries:
//!
//! ```toml
//! [prices."claude-sonnet-4-5"]
//! input = 3.0
//! output = 15.0
//! cache_write = 3.75
//! cache_read = 0.30
//! ```
//!
//! The longest prefix that matches the model name at a word boundary wins
//! (`claude-opus-4` matches `claude-opus-4-20250514` but not `claude-opus-40`).
//! `Tokens::input` is taken to exclude cache reads and writes, as in the
//! Messages API's `usage`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::observability::Tokens;

/// Prompts over this many tokens (input, cache reads and writes) are long-context requests,
/// priced at the model's long-context rates where it has them.
pub const LONG_CONTEXT_TOKENS: u64 = 200_000;

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// 5-minute cache writes.
    pub cache_write: f64,
    pub cache_read: f64,
    /// 1-hour cache writes (twice the input rate).
    #[serde(default)]
    pub cache_write_1h: f64,
    /// Input and output rates of long-context requests (over [`LONG_CONTEXT_TOKENS`]); cache
    /// writes and reads then scale from the long input rate as they do from the normal one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<(f64, f64)>,
    /// Fast mode (`usage.speed: "fast"`): every rate times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fast: Option<f64>,
}

impl Price {
    pub const fn new(input: f64, output: f64, cache_write: f64, cache_read: f64) -> Price {
        Price {
            input,
            output,
            cache_write,
            cache_read,
            cache_write_1h: input * 2.0,
            long_context: None,
            fast: None,
        }
    }

    /// With a fast-mode multiplier.
    pub const fn fast(mut self, multiplier: f64) -> Price {
        self.fast = Some(multiplier);
        self
    }

    /// With long-context rates (input, output).
    pub const fn long(mut self, input: f64, output: f64) -> Price {
        self.long_context = Some((input, output));
        self
    }

    /// The cost of `t` at this price, in USD.
    pub fn cost(&self, t: &Tokens) -> f64 {
        let p = match self.long_context {
            Some((input, output)) if t.prompt() > LONG_CONTEXT_TOKENS => Price {
                input,
                output,
                cache_write: input * 1.25,
                cache_read: input * 0.1,
                cache_write_1h: input * 2.0,
                long_context: None,
                fast: None,
            },
            _ => *self,
        };
        // Fast mode stacks with the other modifiers; batch results cost half.
        let mut m = match self.fast {
            Some(m) if t.fast => m,
            _ => 1.0,
        };
        if t.batch {
            m *= 0.5;
        }
        let one_hour = t.cache_write_1h.min(t.cache_write);
        // u64 → f64 loses precision only past 2^53 tokens.
        m * (t.input as f64 * p.input
            + t.output as f64 * p.output
            + (t.cache_write - one_hour) as f64 * p.cache_write
            + one_hour as f64 * p.cache_write_1h
            + t.cache_read as f64 * p.cache_read)
            / 1_000_000.0
    }
}

/// One `[prices."<prefix>"]` table of the config file (the file format is the config's).
pub use crate::config::PriceOverride;

/// A `[prices]` entry that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    #[error("prices.\"{prefix}\": {field} must be a finite number >= 0")]
    Invalid { prefix: String, field: &'static str },
    #[error(
        "prices.\"{prefix}\": no built-in price matches this prefix, so `input` and `output` are required"
    )]
    Incomplete { prefix: String },
    #[error("prices: the model prefix must not be empty")]
    EmptyPrefix,
}

/// Built-in prices (USD per million tokens: input, output, 5-minute cache write,
/// cache read), from Anthropic's public pricing page as of 2026-11. 1-hour cache writes cost
/// twice the input rate; prompts over 200k tokens on the models with long-context rates
/// (Sonnet 4.x: $6 / $22.50, Opus 4.6: $10 / $37.50) cost those. Fast mode multiplies every rate
/// (Opus 4.6 and 4.7: 6×, Opus 4.8 and 5: 2×; Opus 5.5's is not published here: set
/// `fast_multiplier`). Not modelled: Haiku 5.5's higher rate for prompts over 100k tokens,
/// `inference_geo` surcharges, web search fees. Message Batches results cost half. Override with
/// `[prices]`.
const BUILT_IN: &[(&str, Price)] = &[
    ("claude-fable-5-1", Price::new(10.0, 50.0, 12.50, 0.25)),
    ("claude-fable-5", Price::new(10.0, 50.0, 12.50, 1.0)),
    ("claude-mythos-5-1", Price::new(10.0, 50.0, 12.50, 0.25)),
    ("claude-mythos-5", Price::new(10.0, 50.0, 12.50, 1.0)),
    ("claude-opus-5-5", Price::new(4.0, 20.0, 5.0, 0.20)),
    ("claude-opus-5", Price::new(5.0, 25.0, 6.25, 0.50).fast(2.0)),
    (
        "claude-opus-4-8",
        Price::new(5.0, 25.0, 6.25, 0.50).fast(2.0),
    ),
    (
        "claude-opus-4-7",
        Price::new(5.0, 25.0, 6.25, 0.50).fast(6.0),
    ),
    (
        "claude-opus-4-6",
        Price::new(5.0, 25.0, 6.25, 0.50)
            .long(10.0, 37.50)
            .fast(6.0),
    ),
    ("claude-sonnet-5-5", Price::new(2.0, 10.0, 2.50, 0.20)),
    ("claude-sonnet-5", Price::new(2.0, 10.0, 2.50, 0.20)),
    ("claude-haiku-5-5", Price::new(0.10, 0.50, 0.125, 0.01)),
    ("claude-opus-4-5", Price::new(5.0, 25.0, 6.25, 0.50)),
    ("claude-opus-4-1", Price::new(15.0, 75.0, 18.75, 1.50)),
    ("claude-opus-4", Price::new(15.0, 75.0, 18.75, 1.50)),
    (
        "claude-sonnet-4",
        Price::new(3.0, 15.0, 3.75, 0.30).long(6.0, 22.50),
    ),
    ("claude-3-7-sonnet", Price::new(3.0, 15.0, 3.75, 0.30)),
    ("claude-3-5-sonnet", Price::new(3.0, 15.0, 3.75, 0.30)),
    ("claude-haiku-4-5", Price::new(1.0, 5.0, 1.25, 0.10)),
    ("claude-3-5-haiku", Price::new(0.80, 4.0, 1.0, 0.08)),
    ("claude-3-haiku", Price::new(0.25, 1.25, 0.30, 0.03)),
];

/// Prices by model-name prefix (lower case).
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    entries: BTreeMap<String, Price>,
}

impl Default for PriceTable {
    fn default() -> Self {
        PriceTable::built_in()
    }
}

impl PriceTable {
    /// The built-in list prices.
    pub fn built_in() -> PriceTable {
        PriceTable {
            entries: BUILT_IN
                .iter()
                .map(|(prefix, price)| ((*prefix).to_owned(), *price))
                .collect(),
        }
    }

    /// The built-in table with the config file's `[prices]` applied.
    pub fn with_overrides(
        overrides: &BTreeMap<String, PriceOverride>,
    ) -> Result<PriceTable, PriceError> {
        let mut table = PriceTable::built_in();
        for (prefix, o) in overrides {
            let key = prefix.trim().to_ascii_lowercase();
            if key.is_empty() {
                return Err(PriceError::EmptyPrefix);
            }
            for (field, value) in [
                ("input", o.input),
                ("output", o.output),
                ("cache_write", o.cache_write),
                ("cache_read", o.cache_read),
                ("cache_write_1h", o.cache_write_1h),
                ("fast_multiplier", o.fast_multiplier),
            ] {
                if let Some(v) = value
                    && !(v.is_finite() && v >= 0.0)
                {
                    return Err(PriceError::Invalid {
                        prefix: prefix.clone(),
                        field,
                    });
                }
            }
            let base = table.price(&key);
            let price = match (base, o.input, o.output) {
                (Some(b), _, _) => {
                    let input = o.input.unwrap_or(b.input);
                    Price {
                        input,
                        output: o.output.unwrap_or(b.output),
                        cache_write: o.cache_write.unwrap_or(b.cache_write),
                        cache_read: o.cache_read.unwrap_or(b.cache_read),
                        cache_write_1h: o.cache_write_1h.unwrap_or(input * 2.0),
                        long_context: b.long_context,
                        fast: o.fast_multiplier.or(b.fast),
                    }
                }
                (None, Some(input), Some(output)) => Price {
                    cache_write_1h: o.cache_write_1h.unwrap_or(input * 2.0),
                    fast: o.fast_multiplier,
                    ..Price::new(
                        input,
                        output,
                        o.cache_write.unwrap_or(input * 1.25),
                        o.cache_read.unwrap_or(input * 0.1),
                    )
                },
                (None, _, _) => {
                    return Err(PriceError::Incomplete {
                        prefix: prefix.clone(),
                    });
                }
            };
            table.entries.insert(key, price);
        }
        Ok(table)
    }

    /// The price of `model`: the longest prefix that matches at a boundary. Looked up from
    /// the longest boundary down (a model id has a handful), not by a scan of every entry.
    pub fn price(&self, model: &str) -> Option<Price> {
        let model = model.trim();
        let lower;
        let model = if model.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = model.to_ascii_lowercase();
            lower.as_str()
        } else {
            model
        };
        if let Some(p) = self.entries.get(model) {
            return Some(*p);
        }
        model
            .char_indices()
            .rev()
            .filter(|(_, c)| !c.is_ascii_alphanumeric())
            .find_map(|(end, _)| self.entries.get(&model[..end]).copied())
    }

    /// Estimated cost of `t` on `model` in USD; `None` when the price is unknown.
    pub fn cost(&self, model: &str, t: &Tokens) -> Option<f64> {
        self.price(model).map(|p| p.cost(t))
    }

    /// All entries, by prefix.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Price)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }
}

/// `prefix` matches `model` when `model` is `prefix` or continues it with a
/// separator (not a letter or digit): the rule [`PriceTable::price`] implements by lookups.
#[cfg(test)]
fn matches_prefix(model: &str, prefix: &str) -> bool {
    match model.strip_prefix(prefix) {
        Some(rest) => rest
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_alphanumeric()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approx(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn boundary_match() {
        assert!(matches_prefix("claude-opus-4", "claude-opus-4"));
        assert!(matches_prefix("claude-opus-4-20250514", "claude-opus-4"));
        assert!(matches_prefix(
            "claude-opus-4-5@20251101",
            "claude-opus-4-5"
        ));
        assert!(!matches_prefix("claude-opus-40", "claude-opus-4"));
        assert!(!matches_prefix("claude-opu", "claude-opus-4"));
    }

    /// The rule as a scan over every entry: what `price` answered before it looked prefixes up.
    fn price_by_scan(table: &PriceTable, model: &str) -> Option<Price> {
        let model = model.trim().to_ascii_lowercase();
        table
            .entries
            .iter()
            .filter(|(prefix, _)| matches_prefix(&model, prefix))
            .max_by_key(|(prefix, _)| prefix.len())
            .map(|(_, price)| *price)
    }

    #[test]
    fn lookup_agrees_with_the_scan_on_known_ids() {
        let table = PriceTable::built_in();
        for model in [
            "claude-opus-4",
            "claude-opus-4-20250514",
            "claude-opus-4-5@20251101",
            " Claude-Sonnet-4-5-20250929 ",
            "claude-opus-40",
            "claude-opu",
            "claude-3-5-haiku-latest",
            "claude-haiku-4-5",
            "",
            "-",
            "gpt-4o",
        ] {
            assert_eq!(
                table.price(model),
                price_by_scan(&table, model),
                "{model:?}"
            );
        }
        assert!(table.price("claude-sonnet-4-5-20250929").is_some());
    }

    proptest::proptest! {
        #[test]
        fn lookup_agrees_with_the_scan(
            model in "[ a-zA-Z0-9@._-]{0,40}",
            known in proptest::sample::select(BUILT_IN.iter().map(|(k, _)| *k).collect::<Vec<_>>()),
            tail in "[a-zA-Z0-9@._-]{0,12}",
        ) {
            let table = PriceTable::built_in();
            for m in [model.clone(), format!("{known}{tail}"), format!("{known}{model}")] {
                proptest::prop_assert_eq!(table.price(&m), price_by_scan(&table, &m), "{:?}", m);
            }
        }
    }

    #[test]
    fn cost_formula() {
        let p = Price::new(3.0, 15.0, 3.75, 0.30);
        let t = Tokens {
            input: 1_000_000,
            output: 1_000_000,
            cache_read: 1_000_000,
            cache_write: 1_000_000,
            cache_write_1h: 0,
            fast: false,
            batch: false,
        };
        assert!(approx(p.cost(&t), 3.0 + 15.0 + 3.75 + 0.30));
    }

    #[test]
    fn one_hour_writes_and_long_context() {
        let table = PriceTable::built_in();
        let sonnet = table.price("claude-sonnet-4-5-20250929").unwrap();
        // 100k 1-hour writes of 200k written: 100k at 3.75, 100k at 6.00 (per million).
        let t = Tokens {
            cache_write: 200_000,
            cache_write_1h: 100_000,
            ..Tokens::default()
        };
        assert!(approx(sonnet.cost(&t), 0.1 * 3.75 + 0.1 * 6.0));
        // 150k prompt: normal rates; 250k: the long-context rates on everything.
        let t = Tokens {
            input: 150_000,
            output: 1_000,
            ..Tokens::default()
        };
        assert!(approx(sonnet.cost(&t), 0.45 + 0.015));
        let t = Tokens {
            input: 50_000,
            cache_read: 100_000,
            cache_write: 100_000,
            output: 1_000,
            ..Tokens::default()
        };
        assert!(approx(
            sonnet.cost(&t),
            0.05 * 6.0 + 0.1 * 0.6 + 0.1 * 7.5 + 0.001 * 22.5
        ));
        // Models without long-context rates keep theirs.
        let haiku = table.price("claude-haiku-4-5").unwrap();
        assert!(approx(
            haiku.cost(&t),
            0.05 + 0.1 * 0.1 + 0.1 * 1.25 + 0.001 * 5.0
        ));
        // An override keeps the long-context rates and may set the 1-hour rate.
        let o = BTreeMap::from([(
            "claude-sonnet-4".to_owned(),
            PriceOverride {
                cache_write_1h: Some(9.0),
                ..PriceOverride::default()
            },
        )]);
        let p = PriceTable::with_overrides(&o)
            .unwrap()
            .price("claude-sonnet-4")
            .unwrap();
        assert_eq!((p.cache_write_1h, p.long_context), (9.0, Some((6.0, 22.5))));
    }

    #[test]
    fn fast_mode_multiplies_every_rate_and_stacks() {
        let table = PriceTable::built_in();
        let t = Tokens {
            input: 100_000,
            output: 10_000,
            cache_read: 50_000,
            fast: true,
            ..Tokens::default()
        };
        let standard = Tokens { fast: false, ..t };
        let opus48 = table.price("claude-opus-4-8").unwrap();
        assert!(approx(opus48.cost(&t), 2.0 * opus48.cost(&standard)));
        let opus46 = table.price("claude-opus-4-6").unwrap();
        assert!(approx(opus46.cost(&t), 6.0 * opus46.cost(&standard)));
        // Over 200k: the long-context rates, times six.
        let long = Tokens {
            input: 250_000,
            ..t
        };
        assert!(approx(
            opus46.cost(&long),
            6.0 * (0.25 * 10.0 + 0.01 * 37.5 + 0.05 * 1.0)
        ));
        // Batch results: half of everything.
        let batch = Tokens {
            batch: true,
            ..standard
        };
        assert!(approx(opus48.cost(&batch), 0.5 * opus48.cost(&standard)));
        // Models without fast mode: `fast` changes nothing.
        let sonnet = table.price("claude-sonnet-4-5").unwrap();
        assert!(approx(sonnet.cost(&t), sonnet.cost(&standard)));
    }
}
