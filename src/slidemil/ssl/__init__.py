"""Self-supervised and weakly supervised encoder pretraining: objectives, pair samplers, augmentations.

- `slidemil.ssl.losses`: one objective per file, registered by name (`OBJECTIVES`).
- `slidemil.ssl.augment`: H&E augmentations applied to whole batches as tensor ops.
- `slidemil.ssl.samplers`: pair samplers (`augment`, `spatial`, `mixed`), registered by name.
- `slidemil.ssl.data`: tiles read straight from the Zarr stores, shuffled across slides.
"""
