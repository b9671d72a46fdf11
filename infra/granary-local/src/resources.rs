//! The resources granary-local provisions: those of `template.yaml` (the copy this build was made
//! from, or another given with `--template`), named from the environment as the functions name them.

use granary_ports::Resources;
use std::path::Path;

/// The resources of `template` (a path), or of the built-in template.
pub fn load(template: Option<&Path>) -> Result<Resources, String> {
    let text = match template {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read template {}: {e}", p.display()))?,
        None => granary_resources::TEMPLATE.to_owned(),
    };
    granary_resources::from_template(&text, |var| std::env::var(var).ok()).map_err(|e| e.to_string())
}
