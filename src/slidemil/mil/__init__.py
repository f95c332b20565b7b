"""MIL slide classifiers (registry in `models`), their losses, bags (`bag`, `data`), the training loop
(`loop`), one fold's run and its outputs (`run`) and the `mil` config block's runs (`params`,
torch-free: planning imports it)."""
