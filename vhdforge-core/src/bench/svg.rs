//! The `--plot` chart, written by hand (a few lines of SVG need no library): throughput
//! (left axis) and p95 latency (right axis) against concurrency.

// Chart coordinates: x, y, w, h are the names every SVG reader expects; step counts are tiny.
#![allow(clippy::many_single_char_names, clippy::cast_precision_loss)]

use super::Step;
use std::fmt::Write as _;

const W: f64 = 640.0;
const H: f64 = 360.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 60.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 50.0;

/// The SVG document for `steps`.
#[must_use]
pub fn plot_svg(steps: &[Step]) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let max_rate = steps
        .iter()
        .map(|s| s.mib_per_s)
        .fold(0.0, f64::max)
        .max(1e-9)
        * 1.1;
    let max_p95 = steps.iter().map(|s| s.p95_ms).fold(0.0, f64::max).max(1e-9) * 1.1;
    let n = steps.len().max(1);
    // Steps evenly spaced (concurrency usually doubles from one to the next).
    let x = |i: usize| {
        if n == 1 {
            LEFT + pw / 2.0
        } else {
            LEFT + pw * i as f64 / (n - 1) as f64
        }
    };
    let y = |v: f64, max: f64| TOP + ph * (1.0 - v / max);
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" viewBox=\"0 0 {W} {H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"18\" text-anchor=\"middle\" font-size=\"14\">vhdforge bench: throughput and p95 latency by concurrency</text>\n\
         <line x1=\"{LEFT}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{LEFT}\" y1=\"{TOP}\" x2=\"{LEFT}\" y2=\"{}\" stroke=\"#1f77b4\"/>\n\
         <line x1=\"{}\" y1=\"{TOP}\" x2=\"{}\" y2=\"{}\" stroke=\"#d62728\"/>\n",
        W / 2.0,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph,
        LEFT + pw,
        LEFT + pw,
        TOP + ph
    );
    for k in 0..=4 {
        let f = f64::from(k) / 4.0;
        let yy = TOP + ph * (1.0 - f);
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{yy:.1}\" text-anchor=\"end\" fill=\"#1f77b4\">{:.0}</text>\
             <text x=\"{}\" y=\"{yy:.1}\" fill=\"#d62728\">{:.0}</text>",
            LEFT - 6.0,
            max_rate * f,
            LEFT + pw + 6.0,
            max_p95 * f
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\" fill=\"#1f77b4\">MiB/s</text>\
         <text x=\"{}\" y=\"{}\" transform=\"rotate(90 {} {})\" text-anchor=\"middle\" fill=\"#d62728\">p95 latency (ms)</text>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">concurrency (requests in flight)</text>",
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        W - 14.0,
        TOP + ph / 2.0,
        W - 14.0,
        TOP + ph / 2.0,
        LEFT + pw / 2.0,
        H - 10.0
    );
    let mut rate = String::new();
    let mut lat = String::new();
    for (i, st) in steps.iter().enumerate() {
        let _ = write!(rate, "{:.1},{:.1} ", x(i), y(st.mib_per_s, max_rate));
        let _ = write!(lat, "{:.1},{:.1} ", x(i), y(st.p95_ms, max_p95));
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>\
             <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#1f77b4\"/>\
             <circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"#d62728\"/>",
            x(i),
            TOP + ph + 16.0,
            st.concurrency,
            x(i),
            y(st.mib_per_s, max_rate),
            x(i),
            y(st.p95_ms, max_p95)
        );
    }
    let _ = writeln!(
        s,
        "<polyline points=\"{}\" fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\"/>\n\
         <polyline points=\"{}\" fill=\"none\" stroke=\"#d62728\" stroke-width=\"2\" stroke-dasharray=\"5,3\"/>\n</svg>",
        rate.trim_end(),
        lat.trim_end()
    );
    s
}
