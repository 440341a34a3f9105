//! Loading the feature definitions file (`[ingest] features = "features.toml"`): `[[features]]` tables,
//! validated once at start-up into the core's [`Definitions`].
//!
//! Guarantees: a file that does not parse, or a definition that cannot work, stops the node with an error
//! naming the file, the line and the field (TOML syntax and type errors carry their position from the
//! parser; a definition the core refuses is located by its `[[features]]` table).

use std::path::Path;

use featurestore::ingest::{Definitions, FeatureDefinition};
use featurestore::Limits;
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeaturesFile {
    #[serde(default)]
    features: Vec<FeatureDefinition>,
}

/// The 1-based line of the `index`-th `[[features]]` table in `text`.
fn table_line(text: &str, index: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("[[features]]"))
        .nth(index)
        .map(|(no, _)| no + 1)
}

/// Parses and validates definitions from `text` (read from `path`, named in errors).
pub fn parse(path: &Path, text: &str, limits: &Limits) -> Result<Definitions> {
    let file: FeaturesFile = toml::from_str(text)
        .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.to_string().trim_end())))?;
    Definitions::compile(&file.features, limits).map_err(|e| {
        let index = match &e {
            featurestore::Error::InvalidDefinition { feature, .. } => file
                .features
                .iter()
                .position(|d| d.name == *feature)
                .or_else(|| {
                    feature
                        .strip_prefix('#')
                        .and_then(|n| n.parse::<usize>().ok())
                        .map(|n| n - 1)
                }),
            _ => None,
        };
        let line = index.and_then(|i| table_line(text, i));
        match line {
            Some(line) => Error::Config(format!("{}, line {line}: {e}", path.display())),
            None => Error::Config(format!("{}: {e}", path.display())),
        }
    })
}

/// Reads, parses and validates the definitions file at `path`.
pub fn load(path: &Path, limits: &Limits) -> Result<Definitions> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dev_example_definitions_are_valid() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/features.example.toml"
        ));
        let defs = load(path, &Limits::default()).expect("the shipped example is valid");
        let names: Vec<&str> = defs.features.iter().map(|f| f.name.as_str()).collect();
        for wanted in [
            "page_views",
            "product_views_30m",
            "cart_adds_30m",
            "orders_30m",
            "revenue_7d",
            "last_cart_add",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
    }

    #[test]
    fn an_error_names_the_file_the_line_and_the_field() {
        let text = "[[features]]\nname = \"a\"\non = \"page\"\naggregation = \"count\"\n\n[[features]]\nname = \"b\"\non = \"track\"\nevent = \"x\"\naggregation = \"count\"\nwindow = \"soon\"\n";
        let err = parse(Path::new("f.toml"), text, &Limits::default()).expect_err("bad window");
        let msg = err.to_string();
        assert!(
            msg.contains("f.toml, line 6") && msg.contains("`window`"),
            "{msg}"
        );
        let syntax = parse(
            Path::new("f.toml"),
            "[[features]]\nname = 3\n",
            &Limits::default(),
        )
        .expect_err("bad type");
        assert!(syntax.to_string().contains("line 2"), "{syntax}");
    }
}
