# Per-slide preprocessing: tissue mask and tiles on the global grid, neighbour graphs, cohort QC.


# Masks, then tiles, a batch of slides per job (config tile.slides_per_job; hash buckets as in embed.smk,
# so adding a slide reruns its batch), one rule per batch with literal outputs (see embed.smk for why).
# Batches, not a job per slide: Snakemake spends ~7 ms planning each job, 70 s at 10,000 slides. One
# stage, not a mask job and a tile job: the mask is one thumbnail read, cheap to redo with the tiles.
for _batch, _slides in TILE_BATCHES.items():

    rule:
        name:
            f"tile_b{_batch}"
        input:
            slides=[SLIDE_PATHS[s] for s in _slides],
        output:
            masks=[f"results/masks/{s}.png" for s in _slides],
            meta=[f"results/masks/{s}.json" for s in _slides],
            mask_qc=[f"results/qc/mask/{s}.png" for s in _slides],
            tiles=[directory(f"results/tiles/{s}.zarr") for s in _slides],
            qc=[f"results/qc/tiles/{s}.png" for s in _slides],
        params:
            slides=tile_batch_arg(_slides),
            mask=as_arg(config["mask"]),
            cfg=as_arg(TILE_PARAMS),
            on_error=config["on_slide_error"],
            code=code_version("cli:cmd_preprocess"),
        log:
            f"logs/tile/batch{_batch}.log",
        benchmark:
            f"results/benchmarks/tile/batch{_batch}.tsv"
        threads: 2
        resources:
            mem_mb=2000,
            runtime=40 * len(_slides),
        conda:
            "../../envs/slide-io.yaml"
        shell:
            "python -m slidemil preprocess --slides {params.slides} --mask-params {params.mask} --params {params.cfg} "
            "--on-slide-error {params.on_error} --masks-dir results/masks --mask-qc-dir results/qc/mask "
            "--tiles-dir results/tiles --qc-dir results/qc/tiles --threads {threads} 2> {log:q}"


# Neighbour graphs, a batch of slides per job (config graph.slides_per_job; hash buckets as in embed.smk,
# so adding a slide reruns its batch), one rule per batch with literal outputs (see embed.smk for why).
for _batch, _slides in GRAPH_BATCHES.items():

    rule:
        name:
            f"graph_b{_batch}"
        input:
            tiles=expand("results/tiles/{slide}.zarr", slide=_slides),
        output:
            [f"results/graphs/{s}.npz" for s in _slides],
        params:
            radius=config["graph"]["radius"],
            code=code_version("cli:cmd_graph"),
        log:
            f"logs/graph/batch{_batch}.log",
        resources:
            mem_mb=1000,
            runtime=30,
        conda:
            "../../envs/slide-io.yaml"
        shell:
            "python -m slidemil graph --tiles {input.tiles:q} --radius {params.radius} --out {output:q} 2> {log:q}"


rule qc_cohort:
    input:
        tiles=expand("results/tiles/{slide}.zarr", slide=SLIDES),
        masks=expand("results/masks/{slide}.json", slide=SLIDES),
        samples=config["samples"],  # names the slides (n paths on the command line would overflow it)
    output:
        table=report(
            QC_TABLE,
            caption="../report/qc_table.rst",
            category="6. Quality control",
            labels={"result": "QC per slide"},
        ),
        plot=report(
            "results/qc/cohort.png",
            caption="../report/qc_plot.rst",
            category="6. Quality control",
            labels={"result": "QC overview"},
        ),
    params:
        code=code_version("cli:cmd_qc"),
    log:
        "logs/qc_cohort/cohort.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil qc --tiles-dir results/tiles --masks-dir results/masks --samples {input.samples:q} --out {output.table:q} --plot {output.plot:q} 2> {log:q}"


# Optional, not in `rule all`: CLAM/TRIDENT-style HDF5 per slide (`snakemake --cores 2 export_h5_all`).
rule export_h5:
    input:
        unpack(export_inputs),
    output:
        "results/export/{slide}.h5",
    params:
        features=export_features_arg,
        code=code_version("cli:cmd_export_h5"),
    log:
        "logs/export_h5/{slide}.log",
    conda:
        "../../envs/slide-io.yaml"
    shell:
        "python -m slidemil export-h5 --tiles {input.tiles:q} {params.features} --out {output:q} 2> {log:q}"


rule export_h5_all:
    input:
        expand("results/export/{slide}.h5", slide=SLIDES),
    conda:
        "../../envs/slide-io.yaml"
