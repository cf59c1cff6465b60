"""The demo model's recipe (architecture, initial checkpoint, data, evaluation) and the native-resolution
ablation's fixed-resolution baseline. See docs/demo-model.md and docs/ablation.md."""
