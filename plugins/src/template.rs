//! Prompt templates: the file a config names (or the built-in one), loaded into a strict
//! minijinja environment with its digest.

/// A prompt template: the file a config names (relative to the manifest), else `default`.
pub fn template_text(
    ctx: &relabel_engine::plugin::NodeContext,
    path: Option<&std::path::Path>,
    default: &str,
) -> Result<String, String> {
    match path {
        Some(p) => std::fs::read_to_string(ctx.resolve(p))
            .map_err(|e| format!("template {}: {e}", p.display())),
        None => Ok(default.to_string()),
    }
}

/// A minijinja environment holding `template` as "prompt" (undefined variables are errors),
/// and the template's digest (reports and audits name the prompt version by it).
pub fn strict_template(
    template: &str,
) -> Result<(minijinja::Environment<'static>, String), String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_template_owned("prompt", template.to_string())
        .map_err(|e| format!("template: {e:#}"))?;
    Ok((env, blake3::hash(template.as_bytes()).to_hex().to_string()))
}
