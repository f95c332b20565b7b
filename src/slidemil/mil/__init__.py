"""MIL slide classifiers (registry in `models`), their losses, bags, the training loop (`train`) and the
`mil` config block's runs (`params`, torch-free: planning imports it)."""
