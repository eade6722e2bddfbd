"""Configuration: the fields of a run, their value rules, the presets and validation."""
