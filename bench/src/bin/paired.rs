//! `paired A B`: compare two proxies' figures round by round
//! ([`shoal_bench::paired`]). `A` and `B` are space-separated lists of one
//! figure per round, in the same round order (as `bench/gateway.sh` keeps
//! them). Prints one line to stdout:
//! `median M low L high H confidence C verdict V`, where the ratios are
//! A/B, `[L, H]` is the interval for their median with coverage `C` percent,
//! and `V` is `higher`, `lower` or `not-told-apart`.
//!
//! `paired --coverage N` prints the coverage, in percent, of the interval
//! for `N` rounds (it depends on `N` only).
//!
//! Exit status 2 with a message on stderr when the input is wrong.

use std::process::ExitCode;

use shoal_bench::paired::{interval_rank, paired_ratios, parse_figures};

const USAGE: &str = "usage: paired \"A1 A2 ...\" \"B1 B2 ...\" (one figure per round for each proxy), or paired --coverage ROUNDS";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [a, b] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    if a == "--coverage" {
        return match b.parse::<usize>() {
            Ok(rounds) if rounds >= 2 => {
                println!("{:.1}", 100.0 * interval_rank(rounds).1);
                ExitCode::SUCCESS
            }
            _ => {
                eprintln!("error: --coverage takes a number of rounds of at least 2, not `{b}`");
                ExitCode::from(2)
            }
        };
    }
    let summary = parse_figures(a)
        .and_then(|a| parse_figures(b).map(|b| (a, b)))
        .and_then(|(a, b)| paired_ratios(&a, &b));
    match summary {
        Ok(s) => {
            println!(
                "median {:.3} low {:.3} high {:.3} confidence {:.1} verdict {}",
                s.median,
                s.low,
                s.high,
                100.0 * s.confidence,
                s.verdict()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
