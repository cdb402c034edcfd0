//! The manifest's JSON Schema: the document shape, with a oneOf over node kinds and their configs.

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

use crate::plugin::Registry;

/// Where the committed copy lives, relative to the repository root.
pub const SCHEMA_PATH: &str = "manifests/relabel.schema.json";

pub fn json_schema(registry: &Registry) -> Value {
    let mut generator = SchemaSettings::draft2020_12().into_generator();
    let executor = generator
        .subschema_for::<crate::executor::Executor>()
        .to_value();
    let mut kinds = Vec::new();
    let mut kind_names = Vec::new();
    for p in registry.plugins() {
        let config = p.config_schema(&mut generator).to_value();
        kind_names.push(p.kind());
        kinds.push(json!({
            "title": p.kind(),
            "description": p.about(),
            "type": "object",
            "additionalProperties": false,
            "required": ["id", "kind"],
            "properties": {
                "id": {"$ref": "#/$defs/Id"},
                "kind": {"const": p.kind()},
                "description": {"type": "string"},
                "inputs": {"$ref": "#/$defs/Inputs"},
                "config": config,
                "executor": {
                    "description": "Where the node runs when not in this process (through the remote cache); null: here, whatever `executors:` says for its kind.",
                    "anyOf": [executor.clone(), {"type": "null"}],
                },
            }
        }));
    }
    let resources: Vec<(&str, &str, serde_json::Value)> = registry
        .resources()
        .iter()
        .map(|k| (k.section, k.noun, (k.schema)(&mut generator).to_value()))
        .collect();
    let mut defs = serde_json::Map::new();
    for (k, v) in generator.take_definitions(true) {
        defs.insert(k, v);
    }
    defs.insert(
        "Id".into(),
        json!({
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*$",
            "description": "A node or loop id: letters, digits and _, not starting with a digit."
        }),
    );
    defs.insert(
        "Ref".into(),
        json!({
            "type": "string",
            "pattern": "^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)?$",
            "description": "`node` (its only output), `node.output`, or `loop.carried_value`."
        }),
    );
    defs.insert("Inputs".into(), json!({
        "description": "A list of references (each named after its last part) or a mapping of input names to references.",
        "oneOf": [
            {"type": "array", "items": {"$ref": "#/$defs/Ref"}},
            {"type": "object", "additionalProperties": {"$ref": "#/$defs/Ref"}}
        ]
    }));
    defs.insert(
        "Node".into(),
        json!({
            "description": "A node: one of the known kinds.",
            "oneOf": kinds,
        }),
    );
    defs.insert("Loop".into(), json!({
        "description": "A body of nodes repeated up to max_rounds until `until` holds; round k of each node is its own cache entry.",
        "type": "object",
        "additionalProperties": false,
        "required": ["id", "loop", "nodes"],
        "properties": {
            "id": {"$ref": "#/$defs/Id"},
            "description": {"type": "string"},
            "loop": {
                "type": "object",
                "additionalProperties": false,
                "required": ["max_rounds"],
                "properties": {
                    "max_rounds": {"type": "integer", "minimum": 1, "maximum": 1000},
                    "until": {"type": "string", "description": "A minijinja expression over `round` and the body nodes' metrics, e.g. `flag.flag_rate < 0.02`."},
                    "carry": {
                        "type": "object",
                        "description": "Values carried from round to round: round 1 gets `from`, round k gets round k-1's `next`.",
                        "additionalProperties": {
                            "type": "object",
                            "additionalProperties": false,
                            "required": ["from", "next"],
                            "properties": {"from": {"$ref": "#/$defs/Ref"}, "next": {"$ref": "#/$defs/Ref"}}
                        }
                    }
                }
            },
            "nodes": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Node"}}
        }
    }));
    let mut properties = json!({
        "version": {"const": crate::manifest::VERSION},
        "name": {"type": "string", "minLength": 1},
        "description": {"type": "string"},
        "params": {"type": "object", "description": "Values substituted for `${params.NAME}` in node configs and inputs."},
        "remote": {"type": "string", "pattern": "^(s3|s3a|gs|az|azure|abfs|abfss|file)://", "description": "A remote cache shared by machines (s3://BUCKET/PREFIX, gs://, az://, file:///PATH); `--remote` and `$RELABEL_REMOTE` outrank it. Credentials come from the environment only."},
    });
    properties["executors"] = json!({"type": "object", "description": "Default executors by node kind, e.g. `trainer: {slurm: {cpus: 8, gpus: 1}}`.", "additionalProperties": executor});
    for (section, noun, schema) in resources {
        properties[section] = json!({"type": "object", "description": format!("Named {noun}s."), "additionalProperties": schema});
    }
    properties["nodes"] = json!({"type": "array", "minItems": 1, "items": {"anyOf": [{"$ref": "#/$defs/Node"}, {"$ref": "#/$defs/Loop"}]}});
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "relabel pipeline manifest",
        "description": format!("A relabel pipeline. Node kinds: {}. Regenerate {SCHEMA_PATH} with `cargo xtask schema`.", kind_names.join(", ")),
        "type": "object",
        "additionalProperties": false,
        "required": ["version", "name", "nodes"],
        "properties": properties,
        "$defs": defs,
    })
}
