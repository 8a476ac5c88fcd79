//! `enforcerctl`'s human-readable rendering of daemon answers (`--json` prints them as is).

pub mod clock;
mod fleet;
mod history;
mod lists;
pub mod pam;
pub mod play;
mod status;

pub use fleet::{render_fleet_sessions, render_nodes};
pub use history::render_history;
pub use lists::{filter_user, render_locks, render_recordings, render_sessions};
pub use status::render_status;

/// Formats seconds as "1h 2m 3s".
pub fn human_secs(secs: u64) -> String {
    humantime::format_duration(std::time::Duration::from_secs(secs)).to_string()
}

/// Cuts a wide cell to `max` characters, ending it with "…" (`--json` has it whole).
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Left-aligns rows of cells into columns two spaces apart.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (i, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if i + 1 < row.len() {
                line.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn wide_cells_are_cut() {
        assert_eq!(super::cut("short", 10), "short");
        assert_eq!(super::cut("abcdefghijkl", 5), "abcd…");
        assert_eq!(super::cut("ééééééé", 3), "éé…");
    }
}
