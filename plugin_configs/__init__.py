"""Training presets shipped as JSON files (see rnca_nnunet.config.load_preset)."""
