use enforcer_proto::{ProgramState, StatusReport};

use super::{human_secs, table};

/// Renders `enforcerctl status`.
pub fn render_status(s: &StatusReport) -> String {
    let mut out = format!(
        "enforcerd {} (pid {}), up {} since {}\nkernel {}  config {}  socket {}\n",
        s.version,
        s.pid,
        human_secs(s.uptime_secs),
        s.started_at,
        s.kernel,
        s.config_path.as_deref().unwrap_or("(embedded default)"),
        s.socket,
    );
    out.push_str("\nPROGRAMS\n");
    let rows: Vec<Vec<String>> = s
        .programs
        .iter()
        .map(|p| {
            let state = match &p.state {
                ProgramState::Attached => "attached".to_owned(),
                ProgramState::Failed(why) => format!("FAILED: {why}"),
            };
            let id = p.id.map(|i| format!("id {i}")).unwrap_or_default();
            vec![
                p.name.clone(),
                p.kind.clone(),
                p.attach_point.clone(),
                state,
                id,
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nMAPS\n");
    let rows: Vec<Vec<String>> = s
        .maps
        .iter()
        .map(|m| {
            let fill = match m.entries {
                Some(n) => format!("{n}/{}", m.max_entries),
                None => format!("{} bytes", m.max_entries),
            };
            vec![m.name.clone(), m.kind.clone(), fill]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nFEATURES\n");
    let rows: Vec<Vec<String>> = s
        .features
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                if f.supported { "yes" } else { "no" }.into(),
                f.detail.clone(),
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nEVENTS\n");
    let rows: Vec<Vec<String>> = s
        .events
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push_str(&table(&rows));
    out.push_str("\nSWEEPS (every, runs, last, max, mean; CPU: last, max, mean)\n");
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    let rows: Vec<Vec<String>> = s
        .sweeps
        .iter()
        .map(|w| {
            let mean = |total: u64| ms(total.checked_div(w.runs).unwrap_or(0));
            vec![
                w.name.clone(),
                format!("{} ms", w.every_ms),
                w.runs.to_string(),
                ms(w.last_us),
                ms(w.max_us),
                mean(w.total_us),
                ms(w.last_cpu_us),
                ms(w.max_cpu_us),
                mean(w.total_cpu_us),
            ]
        })
        .collect();
    out.push_str(&table(&rows));
    let lost: u64 = s.dropped.values().sum();
    out.push_str(&format!("\nDROPPED ({lost} in total)\n"));
    let rows: Vec<Vec<String>> = s
        .dropped
        .iter()
        .map(|(k, v)| vec![k.clone(), v.to_string()])
        .collect();
    out.push_str(&table(&rows));
    out
}
