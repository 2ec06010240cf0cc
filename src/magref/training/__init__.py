"""Training MAGREF: config (YAML, validated) and the flow-matching trainer."""
