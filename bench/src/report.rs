//! Markdown tables and the JSON files every command writes.

use serde::Serialize;

use crate::machine::Machine;

/// Formats a number with thousands separators and no decimals.
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency in milliseconds, three decimals below 10 ms.
pub fn ms(v: f64) -> String {
    if v < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

/// A fraction as a whole percentage, or "-" when unknown.
pub fn percent(fraction: Option<f64>) -> String {
    fraction.map_or_else(|| "-".to_owned(), |f| format!("{:.0}%", f * 100.0))
}

/// Microseconds (CPU per operation), two decimals below 10, or "-" when unknown.
pub fn micros(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.1}"),
        None => "-".to_owned(),
    }
}

/// Cores kept busy, two decimals, or "-" when unknown.
pub fn cores(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// A ratio `a / b` as `1.23x`, or `-` when undefined.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}x", a / b)
    } else {
        "-".to_owned()
    }
}

/// A Markdown table from a header and rows.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("| {} |\n", header.join(" | "));
    out.push('|');
    for (i, _) in header.iter().enumerate() {
        out.push_str(if i == 0 { "---|" } else { "---:|" });
    }
    out.push('\n');
    for row in rows {
        out.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    out
}

/// What every command writes with `--json-out`: its figures, the machine, and
/// the same figures as a Markdown section for `report`.
#[derive(Serialize, serde::Deserialize)]
pub struct Section<T> {
    pub kind: String,
    pub title: String,
    pub command: String,
    pub machine: Machine,
    pub figures: T,
    pub markdown: String,
}

pub fn write_section<T: Serialize>(
    path: Option<&std::path::Path>,
    kind: &str,
    title: &str,
    figures: T,
    markdown: String,
) -> anyhow::Result<()> {
    let machine = Machine::read();
    // Other work on the machine moves every figure: say how busy it was.
    let markdown = format!(
        "{markdown}\nLoad average (1, 5, 15 min) when this section finished: {}.\n",
        machine.load_average
    );
    let section = Section {
        kind: kind.to_owned(),
        title: title.to_owned(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        machine,
        figures,
        markdown,
    };
    println!("\n## {title}\n\n{}", section.markdown);
    if let Some(path) = path {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&section)?)?;
    }
    Ok(())
}

/// Joins sections written by earlier commands into one JSON and one Markdown file.
pub fn merge(
    inputs: &[std::path::PathBuf],
    out_json: &std::path::Path,
    out_md: &std::path::Path,
    command: &str,
) -> anyhow::Result<()> {
    let machine = Machine::read();
    let mut sections = Vec::new();
    let mut md = format!(
        "# Tessera benchmark results\n\nMachine: {}.\nCommand: `{command}`.\nClient and servers share the machine's cores; figures are medians over alternating rounds.\n",
        machine.line()
    );
    for input in inputs {
        let text = std::fs::read_to_string(input)?;
        let section: Section<serde_json::Value> = serde_json::from_str(&text)?;
        md.push_str(&format!(
            "\n## {}\n\n`{}`\n\n{}",
            section.title, section.command, section.markdown
        ));
        sections.push(section);
    }
    let all = serde_json::json!({ "machine": machine, "command": command, "sections": sections });
    std::fs::write(out_json, serde_json::to_string_pretty(&all)?)?;
    std::fs::write(out_md, md)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_formatted_for_tables() {
        assert_eq!(thousands(1234567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(ms(0.12345), "0.123");
        assert_eq!(ms(12.34), "12.3");
        assert_eq!(ratio(3.0, 2.0), "1.50x");
        assert_eq!(ratio(1.0, 0.0), "-");
        assert_eq!(micros(Some(7.256)), "7.26");
        assert_eq!(micros(Some(21.04)), "21.0");
        assert_eq!(micros(None), "-");
        assert_eq!(cores(Some(0.956)), "0.96");
        assert_eq!(cores(None), "-");
    }

    #[test]
    fn tables_right_align_figures() {
        let t = table(&["a", "b"], &[vec!["x".into(), "1".into()]]);
        assert_eq!(t, "| a | b |\n|---|---:|\n| x | 1 |\n");
    }
}
